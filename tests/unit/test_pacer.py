from broadcaster.audio.pacer import Pacer


def test_deadlines_come_from_offsets_not_sums():
    pacer = Pacer(start_us=1_000_000, lead_us=300_000)
    slots = [pacer.place(i * 20_000, ready_us=0) for i in range(50)]
    assert [s.play_at_us - 1_000_000 for s in slots] == [i * 20_000 for i in range(50)]
    assert slots[-1].play_at_us - slots[0].play_at_us == 980_000
    assert all(s.send_at_us == s.play_at_us - 300_000 for s in slots)
    assert not any(s.discontinuity for s in slots)


def test_one_hour_of_chunks_has_no_drift():
    pacer = Pacer(start_us=0, lead_us=200_000)
    frame_us = 20_000
    n = 3600 * 1_000_000 // frame_us
    last = None
    for i in range(n):
        # each chunk is ready exactly when it is due, as under a real-time producer
        last = pacer.place(i * frame_us, ready_us=pacer.send_at(i * frame_us))
    assert last is not None
    assert last.play_at_us + frame_us == 3600 * 1_000_000
    assert pacer.underruns == 0


def test_small_lateness_is_tolerated_without_shifting():
    pacer = Pacer(start_us=1_000_000, lead_us=300_000)
    slot = pacer.place(0, ready_us=700_000 + 100_000)  # 100 ms late to send, 200 ms to spare
    assert not slot.discontinuity and slot.play_at_us == 1_000_000


def test_underrun_shifts_the_timeline_once_and_marks_the_gap():
    pacer = Pacer(start_us=1_000_000, lead_us=300_000)
    pacer.place(0, ready_us=700_000)
    late = pacer.place(20_000, ready_us=2_000_000)  # synthesis stalled for ~1.3 s
    assert late.discontinuity
    assert late.send_at_us == 2_000_000
    assert late.play_at_us == 2_300_000  # still a full lead ahead: no burst past the buffer
    after = pacer.place(40_000, ready_us=2_000_001)
    assert not after.discontinuity
    assert after.play_at_us == late.play_at_us + 20_000
    assert pacer.underruns == 1


def test_a_late_first_chunk_is_a_late_start_not_an_underrun():
    # Synthesis made the first chunk 1.2 s after the pacer was created: that delays
    # the start; the audio itself has no gap, so the record must not say "underrun".
    pacer = Pacer(start_us=1_300_000, lead_us=300_000)
    first = pacer.place(0, ready_us=2_200_000)
    assert first.send_at_us == 2_200_000 and first.play_at_us == 2_500_000
    assert pacer.start_delay_us == 1_200_000
    for i in range(1, 50):
        pacer.place(i * 20_000, ready_us=pacer.send_at(i * 20_000))
    assert pacer.underruns == 0
    # a real stall afterwards still counts
    pacer.place(50 * 20_000, ready_us=pacer.send_at(50 * 20_000) + 1_000_000)
    assert pacer.underruns == 1
