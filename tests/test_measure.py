"""Measurement core on a stand-in model whose time is known, on a fake clock (timing accuracy on the real
clock is checked by tests/bench_measurement.py, which is not run in CI)."""

from __future__ import annotations

import time

import pytest

from fuyu_ray.bench.measure import PeakMemory, spread, time_batch

PREFILL_S, TOKEN_S, TOKENS = 0.020, 0.010, 4  # 20 ms + 3 further tokens x 10 ms = 50 ms


class FakeClock:
    """A host clock that moves only when the stand-in model says its work took time."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def stand_in_model(clock: FakeClock, prefill_s: float = PREFILL_S, token_s: float = TOKEN_S, tokens: int = TOKENS):
    """20 ms to the first token, then 10 ms per further token, on the fake clock."""

    def run(token_clock) -> str:
        clock.advance(prefill_s)
        token_clock()
        for _ in range(tokens - 1):
            clock.advance(token_s)
            token_clock()
        clock.advance(0.001)  # after the last token: counted in the batch's total, not in decode
        return "done"

    return run


def test_a_batch_splits_into_prefill_and_decode_on_the_host_clock():
    clock = FakeClock()
    result, timing = time_batch(stand_in_model(clock), "cpu", clock=clock)
    assert result == "done"
    assert timing.steps == TOKENS
    assert timing.total_s == pytest.approx(0.051)
    assert timing.prefill_s == pytest.approx(PREFILL_S)
    assert timing.decode_s_per_token == pytest.approx(TOKEN_S)
    assert timing.decode_s == pytest.approx(0.031)


def test_batches_of_different_speeds_give_their_own_figures():
    clock = FakeClock()
    timings = [
        time_batch(stand_in_model(clock, prefill_s=p, token_s=t, tokens=n), "cpu", clock=clock)[1]
        for p, t, n in ((0.020, 0.010, 4), (0.040, 0.005, 9), (0.010, 0.020, 2))
    ]
    assert [t.steps for t in timings] == [4, 9, 2]
    assert [t.prefill_s for t in timings] == pytest.approx([0.020, 0.040, 0.010])
    assert [t.decode_s_per_token for t in timings] == pytest.approx([0.010, 0.005, 0.020])
    assert [t.total_s for t in timings] == pytest.approx([0.051, 0.081, 0.031])
    latency = spread([t.total_s for t in timings])
    assert latency.median == pytest.approx(0.051) and latency.n == 3


def test_one_token_has_a_prefill_but_no_decode_rate():
    clock = FakeClock()
    _, timing = time_batch(stand_in_model(clock, tokens=1), "cpu", clock=clock)
    assert timing.steps == 1
    assert timing.prefill_s == pytest.approx(PREFILL_S)
    assert timing.decode_s_per_token is None


def test_a_batch_without_token_stamps_has_only_its_total():
    clock = FakeClock()
    _, timing = time_batch(lambda token_clock: clock.advance(0.030), "cpu", clock=clock)
    assert timing.steps == 0 and timing.prefill_s is None and timing.decode_s_per_token is None
    assert timing.total_s == pytest.approx(0.030)


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
        time.sleep(0.5)  # time for the sampling thread to run even on a busy machine
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
