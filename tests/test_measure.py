"""Measurement core on a stand-in model whose time is known: it sleeps 50 ms per batch."""

from __future__ import annotations

import time

from fuyu_ray.measure import PeakMemory, spread, time_batch

PREFILL_S, TOKEN_S, TOKENS = 0.020, 0.010, 4  # 20 ms + 3 further tokens x 10 ms = 50 ms


def sleeping_model(token_clock) -> str:
    time.sleep(PREFILL_S)
    token_clock()
    for _ in range(TOKENS - 1):
        time.sleep(TOKEN_S)
        token_clock()
    return "done"


def test_sleeping_stand_in_is_timed_to_within_5_percent():
    timings = [time_batch(sleeping_model, "cpu")[1] for _ in range(7)]
    latency = spread([t.total_s for t in timings])
    assert abs(latency.median - 0.050) / 0.050 < 0.05  # wide on purpose: a loaded CI box oversleeps
    assert latency.n == 7
    for timing in timings:
        assert timing.steps == TOKENS
        assert abs(timing.prefill_s - PREFILL_S) < 0.005
        assert abs(timing.decode_s_per_token - TOKEN_S) < 0.003
        # prefill and decode add up to the batch's time
        assert abs(timing.prefill_s + timing.decode_s_per_token * (TOKENS - 1) - timing.total_s) < 0.002


def test_spread_statistics():
    result = spread([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (result.median, result.p90, result.n) == (3.0, 100.0, 5)
    assert result.mean == 22.0
    assert spread([]).median is None and spread([]).n == 0
    assert spread([2.0]).std == 0.0


def test_peak_memory_sees_a_temporary_allocation():
    with PeakMemory("cpu", sample_every_s=0.001) as baseline:
        time.sleep(0.02)
    with PeakMemory("cpu", sample_every_s=0.001) as peak:
        block = bytearray(200 * 1024 * 1024)
        block[::4096] = b"x" * len(block[::4096])  # touch every page so it is resident
        time.sleep(0.05)
        del block
    assert peak.rss_bytes - baseline.rss_bytes > 150 * 1024 * 1024


class FakeEvent:
    """A CUDA event stand-in on a fake device timeline: record() notes the time, elapsed_time() is in ms."""

    now = 0.0

    def record(self):
        self.at = FakeEvent.now

    def elapsed_time(self, later: "FakeEvent") -> float:
        return (later.at - self.at) * 1000


def test_token_times_come_from_device_events_without_reading_the_host_clock_per_token():
    host_reads = []

    def host_clock() -> float:
        host_reads.append(1)
        return FakeEvent.now

    def model_on_a_device(token_clock):
        for step_s in (0.030, 0.005, 0.005, 0.005):  # prefill, then three decode steps on the device timeline
            FakeEvent.now += step_s
            token_clock()
        return "done"

    FakeEvent.now = 100.0
    _, timing = time_batch(model_on_a_device, "cpu", clock=host_clock, event_factory=FakeEvent)
    assert len(host_reads) == 2  # the batch's start and end only
    assert timing.steps == 4
    assert abs(timing.prefill_s - 0.030) < 1e-9 and abs(timing.decode_s_per_token - 0.005) < 1e-9
    assert abs(timing.total_s - 0.045) < 1e-9
