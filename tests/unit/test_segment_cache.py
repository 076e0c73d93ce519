"""The on-disk segment cache: keys, LRU eviction, restarts, damage, threads."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from broadcaster.speech.runware.cache import HEADER_BYTES, SegmentCache, cache_key
from broadcaster.speech.runware.schema import OutputFormat

BASE = {
    "model": "alibaba:qwen@3-tts-1.7b-customvoice",
    "text": "Platform two.",
    "voice": "ryan",
    "language": "English",
    "speed": 1.0,
    "prompt": "Calm.",
    "output_format": "WAV",
    "audio_settings": {"sampleRate": 24000, "bitrate": 64, "channels": 1},
}


def key(n: int) -> str:
    return cache_key(**BASE, n=n)


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# --- keys ------------------------------------------------------------------------------


def test_key_is_sha256_hex_and_stable():
    k = cache_key(**BASE)
    assert len(k) == 64 and all(c in "0123456789abcdef" for c in k)
    assert cache_key(**dict(reversed(list(BASE.items())))) == k  # order does not matter
    assert SegmentCache.cache_key(**BASE) == k


@pytest.mark.parametrize(
    ("part", "other"),
    [
        ("model", "alibaba:qwen@3-tts-1.7b-voicedesign"),
        ("text", "Platform three."),
        ("text", "Platform two. "),
        ("voice", "vivian"),
        ("language", "Auto"),
        ("speed", 1.01),
        ("prompt", "Urgent."),
        ("prompt", None),
        ("output_format", "MP3"),
        ("audio_settings", {"sampleRate": 24000, "bitrate": 65, "channels": 1}),
        ("audio_settings", {"sampleRate": 24000, "bitrate": 64, "channels": 2}),
        ("audio_settings", None),
    ],
)
def test_key_changes_with_every_part(part, other):
    assert cache_key(**{**BASE, part: other}) != cache_key(**BASE)


def test_key_normalisation():
    assert cache_key(**{**BASE, "speed": 1}) == cache_key(**BASE)  # 1 == 1.0
    assert cache_key(**{**BASE, "output_format": OutputFormat.WAV}) == cache_key(**BASE)
    no_prompt = {k: v for k, v in BASE.items() if k != "prompt"}
    assert cache_key(**no_prompt, prompt=None) == cache_key(**no_prompt)
    assert cache_key(**{**BASE, "text": "é"}) != cache_key(**{**BASE, "text": "e\u0301"})
    with pytest.raises(TypeError):
        cache_key(text=b"bytes")
    with pytest.raises(ValueError):
        cache_key(speed=float("nan"))
    with pytest.raises(ValueError):
        cache_key()


# --- get / put -------------------------------------------------------------------------


def test_hit_and_miss(tmp_path):
    cache = SegmentCache(tmp_path, max_bytes=1000)
    k = key(1)
    assert cache.get(k) is None
    cache.put(k, b"audio")
    assert cache.get(k) == b"audio"
    assert k in cache and len(cache) == 1
    s = cache.stats
    assert (s.entries, s.bytes, s.hits, s.misses, s.evictions) == (1, 5, 1, 1, 0)
    # Fan-out layout, nothing else left behind.
    assert files(tmp_path) == [tmp_path / k[:2] / f"{k}.bin"]


def test_put_replaces(tmp_path):
    cache = SegmentCache(tmp_path, max_bytes=1000)
    cache.put(key(1), b"old audio")
    cache.put(key(1), b"new")
    assert cache.get(key(1)) == b"new"
    assert cache.stats.bytes == 3 and cache.stats.entries == 1


def test_bad_keys_refused(tmp_path):
    cache = SegmentCache(tmp_path, max_bytes=1000)
    for bad in ["../../etc/passwd", "ABC", key(1).upper(), key(1)[:-1], ""]:
        with pytest.raises(ValueError):
            cache.get(bad)
        with pytest.raises(ValueError):
            cache.put(bad, b"x")


def test_discard(tmp_path):
    cache = SegmentCache(tmp_path, max_bytes=1000)
    cache.put(key(1), b"abc")
    assert cache.discard(key(1)) is True
    assert cache.discard(key(1)) is False
    assert cache.get(key(1)) is None and files(tmp_path) == []
    assert cache.stats.bytes == 0


def test_failed_write_is_not_fatal(tmp_path, monkeypatch, caplog):
    cache = SegmentCache(tmp_path, max_bytes=1000)
    cache.put(key(1), b"old")

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    cache.put(key(1), b"new")
    cache.put(key(2), b"other")
    assert "No space left" in caplog.text
    assert cache.get(key(1)) == b"old" and key(2) not in cache
    assert [p.name for p in files(tmp_path)] == [f"{key(1)}.bin"]  # no temp files left


def test_max_bytes_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        SegmentCache(tmp_path, max_bytes=0)


# --- eviction ----------------------------------------------------------------------------


def test_lru_eviction_order(tmp_path):
    cache = SegmentCache(tmp_path, max_bytes=300)
    for n in (1, 2, 3):
        cache.put(key(n), bytes([n]) * 100)
    assert cache.get(key(1)) is not None  # 1 is now the most recent; 2 the least
    cache.put(key(4), b"\x04" * 100)
    assert key(2) not in cache
    assert all(key(n) in cache for n in (1, 3, 4))
    cache.put(key(5), b"\x05" * 150)  # needs two evictions: 3, then 1
    assert key(3) not in cache and key(1) not in cache
    assert key(4) in cache and key(5) in cache
    s = cache.stats
    assert (s.entries, s.bytes, s.evictions) == (2, 250, 3)
    assert len(files(tmp_path)) == 2


def test_exact_fit_is_kept(tmp_path):
    cache = SegmentCache(tmp_path, max_bytes=100)
    cache.put(key(1), b"x" * 100)
    assert cache.get(key(1)) == b"x" * 100


def test_oversize_item_not_stored(tmp_path):
    cache = SegmentCache(tmp_path, max_bytes=100)
    cache.put(key(1), b"x" * 60)
    cache.put(key(2), b"y" * 101)
    assert key(2) not in cache and cache.get(key(2)) is None
    assert cache.get(key(1)) == b"x" * 60  # nothing was evicted for it
    assert cache.stats.evictions == 0 and len(files(tmp_path)) == 1


# --- restarts and damage -------------------------------------------------------------------


def test_survives_restart_with_recency(tmp_path):
    cache = SegmentCache(tmp_path, max_bytes=300)
    for n in (1, 2, 3):
        cache.put(key(n), bytes([n]) * 100)
    cache.get(key(1))
    del cache

    again = SegmentCache(tmp_path, max_bytes=300)
    s = again.stats
    assert (s.entries, s.bytes, s.hits, s.misses) == (3, 300, 0, 0)
    assert again.get(key(3)) == b"\x03" * 100
    again.put(key(4), b"\x04" * 100)  # 2 was least recently used before the restart
    assert key(2) not in again
    assert all(key(n) in again for n in (1, 3, 4))


def test_restart_with_smaller_limit_evicts_oldest(tmp_path):
    cache = SegmentCache(tmp_path, max_bytes=1000)
    for n in (1, 2, 3):
        cache.put(key(n), b"z" * 100)
    small = SegmentCache(tmp_path, max_bytes=150)
    assert [key(n) in small for n in (1, 2, 3)] == [False, False, True]
    assert small.stats.evictions == 2 and len(files(tmp_path)) == 1


def test_leftover_temp_files_ignored_and_cleaned(tmp_path):
    cache = SegmentCache(tmp_path, max_bytes=1000)
    cache.put(key(1), b"good")
    k2 = key(2)
    (tmp_path / k2[:2]).mkdir(exist_ok=True)
    leftover = tmp_path / k2[:2] / f".{k2}.0123abcd.tmp"
    leftover.write_bytes(b"half a wri")
    again = SegmentCache(tmp_path, max_bytes=1000)
    assert not leftover.exists()
    assert again.stats.entries == 1 and again.stats.bytes == 4
    assert again.get(k2) is None and again.get(key(1)) == b"good"


def test_damaged_files_dropped_at_start(tmp_path):
    cache = SegmentCache(tmp_path, max_bytes=1000)
    for n in (1, 2, 3):
        cache.put(key(n), b"payload %d" % n)
    truncated = tmp_path / key(1)[:2] / f"{key(1)}.bin"
    truncated.write_bytes(truncated.read_bytes()[:-3])
    headerless = tmp_path / key(2)[:2] / f"{key(2)}.bin"
    headerless.write_bytes(b"RIFF raw audio without header")
    again = SegmentCache(tmp_path, max_bytes=1000)
    assert not truncated.exists() and not headerless.exists()
    assert again.stats.entries == 1
    assert again.get(key(3)) == b"payload 3"


def test_corrupted_payload_is_a_miss(tmp_path):
    cache = SegmentCache(tmp_path, max_bytes=1000)
    cache.put(key(1), b"abcdef")
    path = tmp_path / key(1)[:2] / f"{key(1)}.bin"
    blob = bytearray(path.read_bytes())
    blob[HEADER_BYTES] ^= 0xFF  # same length, wrong content
    path.write_bytes(bytes(blob))
    assert cache.get(key(1)) is None
    assert not path.exists() and key(1) not in cache
    assert cache.stats.misses == 1 and cache.stats.bytes == 0


def test_file_removed_behind_our_back(tmp_path):
    cache = SegmentCache(tmp_path, max_bytes=1000)
    cache.put(key(1), b"abc")
    os.remove(tmp_path / key(1)[:2] / f"{key(1)}.bin")
    assert cache.get(key(1)) is None and cache.stats.entries == 0


def test_foreign_files_left_alone(tmp_path):
    (tmp_path / "README").write_text("mine")
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "notes.txt").write_text("mine too")
    cache = SegmentCache(tmp_path, max_bytes=1000)
    assert cache.stats.entries == 0
    assert (tmp_path / "README").exists() and (tmp_path / "ab" / "notes.txt").exists()


# --- threads ----------------------------------------------------------------------------


def test_concurrent_threads(tmp_path):
    cache = SegmentCache(tmp_path, max_bytes=40 * 1000)
    keys = [key(n) for n in range(60)]
    payload = {k: k.encode() * 15 for k in keys}  # 960 bytes each; 60 of them do not fit
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(i: int) -> None:
        try:
            start.wait()
            for round_ in range(5):
                for j, k in enumerate(keys):
                    if (i + j + round_) % 2:
                        cache.put(k, payload[k])
                    else:
                        got = cache.get(k)
                        assert got is None or got == payload[k]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s = cache.stats
    assert s.bytes <= 40 * 1000
    assert s.entries == len(files(tmp_path))  # index and disk agree, no temp files left
    assert s.bytes == sum(p.stat().st_size - HEADER_BYTES for p in files(tmp_path))
    assert s.hits + s.misses == 8 * 5 * 60 // 2
    for k in keys:
        got = cache.get(k)
        assert got is None or got == payload[k]
    again = SegmentCache(tmp_path, max_bytes=40 * 1000)
    assert again.stats.entries == s.entries and again.stats.bytes == s.bytes
