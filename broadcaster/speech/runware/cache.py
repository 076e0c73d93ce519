"""A content-addressed, size-bounded, on-disk cache of synthesized segments.

Keys come from :func:`cache_key`: the SHA-256 of a canonical JSON of everything
that changes the audio (model, text, voice, language, speed, prompt, output format
and settings). Values are the encoded audio bytes as Runware returned them.

Layout: ``root/ab/abcdef….bin`` (two-level fan-out on the key's first two hex
digits). Each file is a 44-byte header (magic, payload length, SHA-256 of the
payload) followed by the payload, so a truncated or damaged file is recognised and
dropped rather than played. Writes go to a temporary file in the same directory and
are moved into place with :func:`os.replace`, so a reader never sees half a file.
The files are not fsync'ed: after a power cut a file may be lost or damaged, which
the header catches.

Eviction is least-recently-used. Recency lives in memory while the process runs and
in each file's mtime across restarts (a hit touches the file with :func:`os.utime`);
at start the directory is scanned, the index rebuilt oldest-first, leftover temporary
files and damaged entries deleted, and anything over ``max_bytes`` evicted. Files in
the tree that the cache did not write are left alone. ``max_bytes`` bounds the payload
bytes (the 44-byte header per entry is not counted); a payload larger than
``max_bytes`` is not stored at all.

Everything here is synchronous file I/O: call it from a worker thread
(``asyncio.to_thread``), never from the event loop. One lock serialises the
operations, so any number of threads may share one instance. One process per
``root``: two processes on the same directory do not see each other's index.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import struct
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

log = logging.getLogger(__name__)

#: Bumped when the meaning of a key changes, so old entries stop matching.
KEY_VERSION: Final = 1

_MAGIC: Final = b"BCS1"
_HEADER: Final = struct.Struct(">4sQ32s")  # magic, payload length, sha256(payload)
HEADER_BYTES: Final = _HEADER.size
_KEY_RE: Final = re.compile(r"[0-9a-f]{64}")
_FANOUT_RE: Final = re.compile(r"[0-9a-f]{2}")
_SUFFIX: Final = ".bin"
_TMP_SUFFIX: Final = ".tmp"


def _canonical(value: Any, path: str) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)  # a StrEnum hashes as its value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"cache key part {path} is not a finite number")
        # 1 and 1.0 make the same audio, so they make the same key.
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v, f"{path}.{k}") for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_canonical(v, f"{path}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"cache key part {path} has type {type(value).__name__}, not JSON data")


def cache_key(**parts: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``parts``.

    Pass everything that changes the audio, e.g.
    ``cache_key(model=MODEL_ID, text=..., voice=..., language=..., speed=...,
    prompt=..., output_format="WAV", audio_settings={...})``. Order does not matter;
    ``None`` values are dropped (an absent prompt and ``prompt=None`` are the same);
    integral floats equal their ints (``speed=1`` and ``speed=1.0``). String enums
    hash as their value.
    """
    if not parts:
        raise ValueError("cache_key needs at least one part")
    body = _canonical({"_v": KEY_VERSION, **parts}, "")
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    bytes: int
    hits: int
    misses: int
    evictions: int


class SegmentCache:
    """See the module docstring. ``get``/``put`` block on disk I/O: worker threads only."""

    cache_key = staticmethod(cache_key)

    def __init__(self, root: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._index: OrderedDict[str, int] = OrderedDict()  # key -> payload bytes, LRU first
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._last_mtime_ns = 0
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._scan()
            self._evict_to(self.max_bytes)

    # --- public ----------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """The payload stored under ``key``, or ``None``. A hit makes it most recent."""
        path = self._path(key)
        with self._lock:
            if key not in self._index:
                self._misses += 1
                return None
            data = self._read(path)
            if data is None:
                self._drop(key, path)
                self._misses += 1
                return None
            self._index.move_to_end(key)
            self._hits += 1
            with contextlib.suppress(OSError):
                self._touch(path)
            return data

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (replacing any previous value), then evict the
        least recently used entries until the total is within ``max_bytes``. Data
        larger than ``max_bytes`` is not stored. Best effort: a failed write (disk
        full, permissions) is logged and otherwise ignored."""
        path = self._path(key)
        size = len(data)
        with self._lock:
            if size > self.max_bytes:
                return
            tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}{_TMP_SUFFIX}")
            try:
                path.parent.mkdir(exist_ok=True)
                with open(tmp, "wb") as f:
                    f.write(_HEADER.pack(_MAGIC, size, hashlib.sha256(data).digest()))
                    f.write(data)
                os.replace(tmp, path)
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                if not isinstance(exc, OSError):
                    raise
                # A full or read-only disk must not fail the announcement: the
                # audio is still delivered, just not cached. Any previous version
                # of this key is untouched (os.replace never ran).
                log.warning("segment cache: cannot store %s: %s", path, exc)
                return
            with contextlib.suppress(OSError):
                self._touch(path)
            self._bytes -= self._index.pop(key, 0)
            self._index[key] = size
            self._bytes += size
            self._evict_to(self.max_bytes)

    def discard(self, key: str) -> bool:
        """Remove ``key`` (e.g. its audio turned out undecodable); ``True`` if it was there."""
        path = self._path(key)
        with self._lock:
            if key not in self._index:
                return False
            self._drop(key, path)
            return True

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._index

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                entries=len(self._index),
                bytes=self._bytes,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
            )

    # --- internals (lock held) ------------------------------------------------------------

    def _path(self, key: str) -> Path:
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise ValueError(f"not a cache key (64 lower-case hex digits): {key!r}")
        return self.root / key[:2] / f"{key}{_SUFFIX}"

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        if len(blob) < HEADER_BYTES:
            return None
        magic, length, digest = _HEADER.unpack_from(blob)
        data = blob[HEADER_BYTES:]
        if magic != _MAGIC or length != len(data) or hashlib.sha256(data).digest() != digest:
            return None
        return data

    def _touch(self, path: Path) -> None:
        """Set mtime to now, strictly after every earlier touch, so that the order
        survives a restart even when two touches fall in the same clock tick."""
        os.utime(path)
        mtime = path.stat().st_mtime_ns
        if mtime <= self._last_mtime_ns:
            mtime = self._last_mtime_ns + 1
            os.utime(path, ns=(mtime, mtime))
        self._last_mtime_ns = mtime

    def _drop(self, key: str, path: Path) -> None:
        self._bytes -= self._index.pop(key, 0)
        with contextlib.suppress(OSError):
            path.unlink()

    def _evict_to(self, limit: int) -> None:
        while self._bytes > limit and self._index:
            key = next(iter(self._index))
            self._drop(key, self._path(key))
            self._evictions += 1

    def _scan(self) -> None:
        found: list[tuple[int, str, int]] = []  # (mtime_ns, key, payload bytes)
        for sub in self.root.iterdir():
            if not _FANOUT_RE.fullmatch(sub.name) or not sub.is_dir():
                continue
            for entry in sub.iterdir():
                name = entry.name
                if name.startswith(".") and name.endswith(_TMP_SUFFIX):
                    # A write that never reached os.replace.
                    with contextlib.suppress(OSError):
                        entry.unlink()
                    continue
                key = name.removesuffix(_SUFFIX)
                if name == key or not _KEY_RE.fullmatch(key) or key[:2] != sub.name:
                    continue  # not ours: leave it alone
                try:
                    st = entry.stat()
                    with open(entry, "rb") as f:
                        head = f.read(HEADER_BYTES)
                except OSError:
                    continue
                ok = len(head) == HEADER_BYTES
                if ok:
                    magic, length, _ = _HEADER.unpack(head)
                    ok = magic == _MAGIC and length == st.st_size - HEADER_BYTES
                if not ok:
                    with contextlib.suppress(OSError):
                        entry.unlink()
                    continue
                found.append((st.st_mtime_ns, key, st.st_size - HEADER_BYTES))
        found.sort()
        for mtime, key, size in found:
            self._index[key] = size
            self._bytes += size
            self._last_mtime_ns = max(self._last_mtime_ns, mtime)
