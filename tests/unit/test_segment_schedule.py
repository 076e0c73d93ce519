"""The segment scheduler: which engine speaks each segment, from readiness and play times."""

from __future__ import annotations

from broadcaster.speech.schedule import Decision, Pick, SegmentScheduler, engine_label

T0 = 1_000_000_000


def plan(**kw):
    args = {
        "primary": "runware",
        "local": "espeak-ng",
        "asked_us": T0,
        "margin_us": 300_000,
        "first_audio_deadline_us": 6_000_000,
        "emergency_start_us": 100_000,
    }
    return SegmentScheduler(**{**args, **kw})


def test_ready_audio_is_the_primarys_whatever_the_time():
    p = plan()
    assert p.decide(3, now_us=T0 + 99_000_000, ready=True, needed_at_us=T0).pick is Pick.PRIMARY


def test_a_later_segment_waits_until_one_margin_before_it_is_needed_then_goes_local():
    p = plan()
    needed = T0 + 5_000_000
    assert p.decide(2, now_us=T0, ready=False, needed_at_us=needed) == Decision(
        Pick.WAIT, needed - 300_000
    )
    late = p.decide(2, now_us=needed - 300_000, ready=False, needed_at_us=needed)
    assert late.pick is Pick.LOCAL
    assert late.reason == "runware's audio was not ready 0.3 s before it was needed"
    # the next segment is decided afresh: back to the primary when it is ready
    assert p.decide(3, now_us=needed, ready=True, needed_at_us=needed + 2_000_000).pick is (
        Pick.PRIMARY
    )


def test_without_a_timeline_a_later_segment_waits_for_the_primary():
    assert plan().decide(1, now_us=T0 + 60_000_000, ready=False) == Decision(Pick.WAIT, None)


def test_the_first_segment_of_a_routine_announcement_waits_up_to_the_first_audio_deadline():
    p = plan()
    assert p.decide(0, now_us=T0, ready=False, needed_at_us=T0) == Decision(
        Pick.WAIT, T0 + 6_000_000
    )
    late = p.decide(0, now_us=T0 + 6_000_000, ready=False)
    assert late == Decision(Pick.LOCAL, reason="runware produced no audio within 6 s")


def test_an_emergency_starts_locally_unless_the_primarys_audio_is_there():
    p = plan(emergency=True)
    assert p.decide(0, now_us=T0, ready=False) == Decision(Pick.WAIT, T0 + 100_000)
    assert p.decide(0, now_us=T0 + 100_000, ready=False) == Decision(
        Pick.LOCAL, reason="emergency: runware's audio was not ready at once"
    )
    assert p.decide(0, now_us=T0, ready=True).pick is Pick.PRIMARY


def test_a_later_language_part_is_timed_by_the_playout_not_the_first_audio_deadline():
    p = plan(starts_audio=False)
    assert p.decide(0, now_us=T0, ready=False, needed_at_us=T0 + 1_000_000) == Decision(
        Pick.WAIT, T0 + 700_000
    )


def test_a_failed_segment_is_local_or_the_error_without_a_local_engine():
    assert plan().decide(1, now_us=T0, ready=False, error="boom") == Decision(
        Pick.LOCAL, reason="runware failed: boom"
    )
    assert plan(local=None).decide(1, now_us=T0, ready=False, error="boom") == Decision(
        Pick.FAIL, reason="runware failed: boom"
    )


def test_without_a_local_engine_a_late_segment_is_waited_for_with_the_reason():
    d = plan(local=None).decide(1, now_us=T0 + 5_000_000, ready=False, needed_at_us=T0)
    assert d == Decision(
        Pick.WAIT, None, "runware's audio was not ready 0.3 s before it was needed"
    )
    # a late first segment only starts the announcement later: no hole, no warning
    first = plan(local=None, emergency=True).decide(0, now_us=T0 + 5_000_000, ready=False)
    assert first == Decision(Pick.WAIT)


def test_the_engine_label_is_honest_about_a_mix():
    assert engine_label("runware", "espeak-ng", ["runware", "runware"]) == "runware"
    assert engine_label("runware", "espeak-ng", ["espeak-ng"]) == (
        "espeak-ng (fallback from runware)"
    )
    assert engine_label("runware", "espeak-ng", ["runware", "espeak-ng", "runware"]) == (
        "runware (1 of 3 segments by espeak-ng)"
    )
    assert engine_label("runware", None, []) == "runware"
