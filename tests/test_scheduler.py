"""The scheduler's fault paths, with a fake actor and a fake clock: no Ray, milliseconds each.

The slow Ray tests (test_cluster_faults, test_crowded_node) are the integration check of the
same paths on real actors.
"""

from __future__ import annotations

from fuyu_ray.driver.scheduler import RETRY_PING_S, ActorState, CallFailed, Scheduler
from fuyu_ray.job.cells import Cell
from fuyu_ray.job.spec import DatasetSource, Point, TaskOverride
from fuyu_ray.storage.records import CUDA_FATAL, cell_batch, finished_cell, outcome_row, sample_table


def make_cells(optimization: str, batches: list[int]) -> list[Cell]:
    return [
        Cell(
            "standin",
            "random",
            1,
            Point("cpu", "textvqa", batch, 224, 200, optimization),
            DatasetSource(),
            TaskOverride(),
        )
        for batch in batches
    ]


class Call:
    def __init__(self, actor, kind: str, cell=None):
        self.actor, self.kind, self.cell = actor, kind, cell
        self.done, self.value, self.failure = False, None, None


class FakeActor:
    """Does what the pool's script says for each batch size: ok, crash, die, hang, cuda."""

    def __init__(self, pool: "FakePool", variant, index: int):
        self.pool, self.variant = pool, variant
        self.name = f"{variant.optimization}-{index}"
        self.incarnation = 1.0
        self.phase = "alive"
        self.quiet_pings = 0  # pings that fail while restarting, e.g. waiting for a crowded node's CPUs
        self.killed = False
        self.ran: list[int] = []

    def run(self, cell: Cell) -> Call:
        call = Call(self, "run", cell)
        self.pool.calls.append(call)
        return call

    def ping(self) -> Call:
        call = Call(self, "ping")
        self.pool.calls.append(call)
        return call

    def kill(self, restart: bool) -> None:
        self.pool.kills.append((self.name, restart))
        if restart:
            self.crash(quiet_pings=0, keep_answering_as_old=self.pool.stale_answers)
        else:
            self.killed, self.phase = True, "dead"

    def crash(self, quiet_pings: int, keep_answering_as_old: int = 0) -> None:
        self.restarts = getattr(self, "restarts", 0) + 1
        if self.restarts > self.pool.max_restarts:
            self.phase = "dead"
            return
        self.phase, self.quiet_pings = "waiting", quiet_pings
        self.old_answers = keep_answering_as_old

    def state(self) -> ActorState:
        return ActorState(self.phase, {"dead": "no restarts left", "waiting": "restarting"}.get(self.phase, "alive"))

    def finish(self) -> dict | None:
        return None if self.phase == "dead" else {"started_at": 0.0, "load_s": 0.0}

    # what happens when the pool completes a call
    def complete(self, call: Call) -> None:
        call.done = True
        if call.kind == "ping":
            self._answer_ping(call)
            return
        behaviour = self.pool.script.get((self.variant.optimization, call.cell.point.batch_size), "ok")
        if self.phase != "alive":
            call.failure = CallFailed("ActorUnavailableError: temporarily unavailable", actor_lost=True)
        elif behaviour == "crash":
            self.pool.script.pop((self.variant.optimization, call.cell.point.batch_size))
            call.failure = CallFailed("ActorUnavailableError: Socket closed", actor_lost=True)
            self.crash(quiet_pings=self.pool.restart_quiet_pings)
        elif behaviour == "hang":
            call.done = False
        else:
            self.ran.append(call.cell.point.batch_size)
            error = CUDA_FATAL + "CUDA error: illegal address" if behaviour == "cuda" else None
            status = "failed" if error else "ok"
            if behaviour == "cuda":
                self.pool.script.pop((self.variant.optimization, call.cell.point.batch_size))
            row = outcome_row(call.cell.settings(), status, error, actor=self.name, cell_s=1.0)
            call.value = finished_cell(cell_batch(row), sample_table([]))

    def _answer_ping(self, call: Call) -> None:
        if self.pool.pending_forever:
            call.done = False  # an actor whose creation waits for resources: its ping neither answers nor fails
            return
        if self.phase == "dead":
            call.failure = CallFailed("ActorDiedError: the actor died", actor_lost=True)
        elif getattr(self, "old_answers", 0) > 0:
            self.old_answers -= 1
            call.value = self.incarnation  # the process being restarted has not gone yet
        elif self.phase == "waiting" and self.quiet_pings > 0:
            self.quiet_pings -= 1
            call.failure = CallFailed("ActorUnavailableError: temporarily unavailable", actor_lost=True)
        else:
            if self.phase == "waiting":
                self.incarnation += 1.0
            self.phase = "alive"
            call.value = self.incarnation


class FakePool:
    def __init__(
        self,
        script: dict | None = None,
        restart_quiet_pings: int = 0,
        max_restarts: int = 2,
        stale_answers: int = 0,
        unplaceable: str | None = None,
    ):
        self.script = dict(script or {})
        self.restart_quiet_pings, self.max_restarts, self.stale_answers = (
            restart_quiet_pings,
            max_restarts,
            stale_answers,
        )
        self.reason = unplaceable
        self.pending_forever = False
        self.actors: list[FakeActor] = []
        self.calls: list[Call] = []
        self.kills: list[tuple[str, bool]] = []
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def start(self, variant, index: int) -> FakeActor:
        actor = FakeActor(self, variant, index)
        self.actors.append(actor)
        return actor

    def wait(self, calls: list, timeout: float) -> list:
        # One call finishes per wait, oldest first, as ray.wait(num_returns=1) hands them out.
        for call in self.calls:
            if call in calls and not call.done and not call.actor.killed:
                call.actor.complete(call)
                if call.done:
                    self.now += 0.01
                    return [call]
        self.now += timeout
        if self.now > 10_000:
            raise AssertionError("the scheduler never finished")
        return []

    def result(self, call: Call):
        if call.failure:
            raise call.failure
        return call.value

    def unplaceable(self, variant) -> str | None:
        return self.reason


def run(pool: FakePool, cells: list[Cell], actors: int = 1, timeout_s: float = 100.0):
    records, messages = [], []
    scheduler = Scheduler(
        pool,
        lambda finished: records.append(finished.row),
        lambda cell: None,
        timeout_s,
        on_message=messages.append,
        clock=pool.clock,
    )
    scheduler.run(cells, lambda variant: actors)
    return records, messages


def statuses(records) -> dict[tuple[str, int], str]:
    return {(r["optimization"], r["batch_size"]): r["status"] for r in records}


def test_every_cell_gets_exactly_one_record():
    cells = make_cells("fp32", [1, 2, 3]) + make_cells("fp16", [1, 2])
    records, _ = run(FakePool(), cells)
    assert sorted(r["cell_id"] for r in records) == sorted(c.cell_id for c in cells)
    assert set(statuses(records).values()) == {"ok"}


def test_a_crash_mid_cell_costs_that_cell_only_however_long_the_restart_waits():
    """On a crowded node the restarted actor waits for another variant's resources: many
    unanswered pings, which must not count as deaths."""
    pool = FakePool(script={("fp32", 2): "crash"}, restart_quiet_pings=40)
    records, messages = run(pool, make_cells("fp32", [1, 2, 3, 4]))
    assert statuses(records) == {("fp32", 1): "ok", ("fp32", 2): "failed", ("fp32", 3): "ok", ("fp32", 4): "ok"}
    failed = next(r for r in records if r["status"] == "failed")
    assert "died" in failed["error"] and "Socket closed" in failed["error"]
    assert pool.actors[0].ran == [1, 3, 4]  # the restarted actor took the rest; no fresh actor was needed
    assert len(pool.actors) == 1
    assert any("restarting" in m and "wait" in m for m in messages)
    assert pool.now >= 40 * RETRY_PING_S  # it really waited, pinging at intervals


def test_an_actor_dead_for_good_hands_its_cells_to_one_fresh_actor():
    pool = FakePool(script={("fp32", 2): "crash"}, max_restarts=0)
    records, messages = run(pool, make_cells("fp32", [1, 2, 3]))
    assert statuses(records) == {("fp32", 1): "ok", ("fp32", 2): "failed", ("fp32", 3): "ok"}
    assert [a.ran for a in pool.actors] == [[1], [3]]
    assert any("dead for good" in m and "fresh worker" in m for m in messages)
    assert pool.kills[0] == ("fp32-0", False)  # given up for good: killed without a restart (the fresh one retires)
    failed = next(r for r in records if r["status"] == "failed")
    assert failed["actor"] == "fp32-0"  # the record names the worker that died under it


def test_a_variant_whose_actors_keep_dying_gives_each_remaining_cell_a_record_with_the_cause():
    script = {("fp32", b): "crash" for b in (1, 2)}
    pool = FakePool(script=script, max_restarts=0)
    records, _ = run(pool, make_cells("fp32", [1, 2, 3, 4]) + make_cells("fp16", [1]))
    assert statuses(records) == {
        ("fp32", 1): "failed",
        ("fp32", 2): "failed",
        ("fp32", 3): "failed",
        ("fp32", 4): "failed",
        ("fp16", 1): "ok",
    }
    given_up = [r for r in records if r["batch_size"] in (3, 4)]
    assert all("dead for good" in r["error"] and "no restarts left" in r["error"] for r in given_up)
    assert len(pool.actors) == 3  # fp32's first, its one fresh replacement, and fp16's


def test_a_variant_with_another_live_actor_lets_it_take_the_cells():
    pool = FakePool(script={("fp32", 1): "crash"}, max_restarts=0)
    records, _ = run(pool, make_cells("fp32", [1, 2, 3, 4, 5]), actors=2)
    assert sorted(statuses(records).values()) == ["failed", "ok", "ok", "ok", "ok"]
    assert len(pool.actors) == 2  # no fresh actor: the survivor is enough


def test_a_restart_that_can_never_be_placed_fails_the_rest_with_that_reason(monkeypatch):
    pool = FakePool(script={("fp32", 1): "crash"}, restart_quiet_pings=10**6)
    original_crash = FakeActor.crash

    def crash_and_lose_the_node(self, quiet_pings, keep_answering_as_old=0):
        original_crash(self, quiet_pings, keep_answering_as_old)
        pool.reason = "no node in the cluster has CPU=2 (device cpu)"

    monkeypatch.setattr(FakeActor, "crash", crash_and_lose_the_node)
    records, _ = run(pool, make_cells("fp32", [1, 2, 3]))
    assert statuses(records) == {("fp32", 1): "failed", ("fp32", 2): "failed", ("fp32", 3): "failed"}
    assert all("cannot be placed again: no node in the cluster has CPU=2" in r["error"] for r in records[1:])


def test_a_cell_past_its_timeout_is_recorded_and_its_actor_replaced():
    pool = FakePool(script={("fp32", 2): "hang"})
    records, _ = run(pool, make_cells("fp32", [1, 2, 3]), timeout_s=5.0)
    assert statuses(records) == {("fp32", 1): "ok", ("fp32", 2): "timeout", ("fp32", 3): "ok"}
    assert "cell_timeout_s=5" in next(r["error"] for r in records if r["status"] == "timeout")
    assert ("fp32-0", False) in pool.kills
    assert [a.ran for a in pool.actors] == [[1], [3]]


def test_a_hung_cell_times_out_after_cell_timeout_s_not_before_and_not_much_later():
    """On the fake clock: each wait with nothing finished moves it by the one-second wait, so the
    timeout is seen within one wait after cell_timeout_s has passed since the cell started."""
    pool = FakePool(script={("fp32", 2): "hang"})
    started_at, recorded_at, records = {}, {}, []
    scheduler = Scheduler(
        pool,
        lambda finished: (records.append(finished.row), recorded_at.setdefault(finished.row["batch_size"], pool.now)),
        lambda cell: started_at.setdefault(cell.point.batch_size, pool.now),
        cell_timeout_s=300.0,
        clock=pool.clock,
    )
    scheduler.run(make_cells("fp32", [1, 2]), lambda variant: 1)
    assert statuses(records) == {("fp32", 1): "ok", ("fp32", 2): "timeout"}
    waited = recorded_at[2] - started_at[2]
    assert 300.0 < waited <= 300.0 + 1.0 + 0.1, waited


def test_a_cuda_fatal_cell_restarts_its_actor_and_ignores_the_old_process_answering():
    pool = FakePool(script={("fp32", 2): "cuda"}, stale_answers=3)
    records, _ = run(pool, make_cells("fp32", [1, 2, 3]))
    assert statuses(records) == {("fp32", 1): "ok", ("fp32", 2): "failed", ("fp32", 3): "ok"}
    actor = pool.actors[0]
    assert ("fp32-0", True) in pool.kills  # restarted in place, not replaced
    assert actor.incarnation == 2.0 and actor.ran == [1, 2, 3]
    assert len(pool.actors) == 1


def test_never_more_actors_than_cells_and_all_retired():
    pool = FakePool()
    run(pool, make_cells("fp32", [1]), actors=3)
    assert len(pool.actors) == 1
    assert all(actor.killed for actor in pool.actors)


def test_a_waiting_actor_is_retired_once_the_others_have_taken_every_cell():
    pool = FakePool(script={("fp32", 1): "crash"}, restart_quiet_pings=10**6)
    records, _ = run(pool, make_cells("fp32", [1, 2, 3]), actors=2)
    assert sorted(statuses(records).values()) == ["failed", "ok", "ok"]
    assert all(actor.killed for actor in pool.actors)
    assert pool.now < 100  # not the hours the restart would have waited


def test_an_actor_still_waiting_to_be_created_when_its_node_leaves_gives_its_cells_a_cause():
    pool = FakePool()
    pool.pending_forever = True
    original_wait = pool.wait

    def wait_and_lose_the_gpu_node(calls, timeout):
        if pool.now > 30:
            pool.reason = "no node in the cluster has CPU=1, GPU=1 (device cuda)"
        return original_wait(calls, timeout)

    pool.wait = wait_and_lose_the_gpu_node
    records, _ = run(pool, make_cells("fp16", [1, 2]))
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert all("cannot be placed: no node in the cluster has CPU=1, GPU=1" in r["error"] for r in records)
    assert pool.now < 100


def test_the_busy_time_is_the_sum_of_every_cells_own_time():
    pool = FakePool()
    scheduler = Scheduler(pool, lambda finished: None, lambda cell: None, 100.0, clock=pool.clock)
    stats = scheduler.run(make_cells("fp32", [1, 2, 3]) + make_cells("fp16", [1]), lambda variant: 1)
    assert stats.busy_cell_s == 4.0  # each fake cell reports cell_s = 1.0
