"""Which cell goes to which actor, and what a fault costs: one crash is one failed cell.

Plain Python over a small actor protocol, so that every fault path is tested in milliseconds
with a fake actor; `fuyu_ray.driver.execute` puts Ray actors behind the same protocol.

An actor has at most one cell in flight. Before it gets a cell it must answer a ping, so a
cell's timeout never runs while its actor waits for resources, loads its model, or restarts.
Whether an actor that does not answer is coming back is the cluster's word (its actor
state), never a count of failed pings: on a crowded node a restart can wait for resources
for as long as another variant's actor holds them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from fuyu_ray.job.cells import Cell, Variant
from fuyu_ray.storage.records import CUDA_FATAL, FinishedCell, cell_batch, finished_cell, outcome_row, sample_table

RETRY_PING_S = 0.5  # how often an actor that is restarting or waiting for resources is asked again
PLACEMENT_CHECK_S = 5.0  # how often a ping still unanswered makes the cluster be asked whether the actor can be placed
FRESH_ACTORS_PER_VARIANT = 1  # after an actor is dead for good, its variant gets one new actor


class CallFailed(Exception):
    """A call that did not return: `actor_lost` when the actor process went away with it."""

    def __init__(self, reason: str, actor_lost: bool):
        super().__init__(reason)
        self.reason, self.actor_lost = reason, actor_lost


@dataclass(frozen=True)
class ActorState:
    """What the cluster says of an actor: `alive`, `waiting` (being created or restarted, or
    waiting for resources to do so) or `dead` (for good: no restarts left, or killed)."""

    phase: str
    detail: str = ""


class Actor(Protocol):
    name: str

    def run(self, cell: Cell) -> Any: ...
    def ping(self) -> Any: ...  # answers with the start time of the process: a new one after a restart
    def kill(self, restart: bool) -> None: ...
    def state(self) -> ActorState: ...
    def finish(self) -> dict | None: ...  # releases what it holds; started_at and load_s, when it can still say


class Pool(Protocol):
    def start(self, variant: Variant, index: int) -> Actor: ...
    def wait(self, calls: list, timeout: float) -> list: ...  # the calls that have finished
    def result(self, call) -> Any: ...  # the call's value, or raises CallFailed
    def unplaceable(self, variant: Variant) -> str | None: ...  # why no node could host it now


@dataclass
class Slot:
    """One actor of a variant, and what it is doing: running a cell, answering a ping, or resting
    until its next ping (`retry_at`)."""

    variant: Variant
    actor: Actor
    cell: Cell | None = None
    call: Any = None
    submitted_at: float = 0.0
    retry_at: float | None = None
    incarnation: float | None = None  # the start time of the process that last answered
    stale: float | None = None  # an incarnation that was restarted on purpose: its answers do not count
    answered: bool = False  # the actor's current process has answered: it can finish and report its lifetime
    pinged_at: float = 0.0
    waiting_since: float | None = None  # when it last went quiet; for the one line that says so


@dataclass
class ExecutionStats:
    actors: list[dict] = field(default_factory=list)  # started_at, ended_at, load_s, name per actor
    busy_cell_s: float = 0.0

    @property
    def busy_s(self) -> float:
        return self.busy_cell_s + sum(a["load_s"] for a in self.actors)

    @property
    def model_loads(self) -> int:
        return len(self.actors)

    @property
    def workers(self) -> int:
        """The most actors alive at once: the parallelism the wall time bought."""
        events = sorted([(a["started_at"], 1) for a in self.actors] + [(a["ended_at"], -1) for a in self.actors])
        alive = peak = 0
        for _, step in events:
            alive += step
            peak = max(peak, alive)
        return peak


def outcome_record(cell: Cell, status: str, error: str, **extra) -> FinishedCell:
    return finished_cell(cell_batch(outcome_row(cell.settings(), status, error, **extra)), sample_table([]))


class Scheduler:
    """Feeds each variant's cells to its actors, and turns every fault into records."""

    def __init__(
        self,
        pool: Pool,
        on_record: Callable[[FinishedCell], None],
        on_start: Callable[[Cell], None],
        cell_timeout_s: float,
        on_message: Callable[[str], None] = lambda text: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.pool, self.on_record, self.on_start, self.on_message = pool, on_record, on_start, on_message
        self.cell_timeout_s, self.clock = cell_timeout_s, clock
        self.queues: dict[Variant, list[Cell]] = {}
        self.slots: list[Slot] = []
        self.started: dict[Variant, int] = {}
        self.fresh_left: dict[Variant, int] = {}
        self.stats = ExecutionStats()

    def run(self, cells: list[Cell], actors_per_variant: Callable[[Variant], int]) -> ExecutionStats:
        for cell in cells:
            self.queues.setdefault(cell.variant, []).append(cell)
        for variant, queue in self.queues.items():
            self.fresh_left[variant] = FRESH_ACTORS_PER_VARIANT
            for _ in range(min(actors_per_variant(variant), len(queue))):
                self._start(variant)
        while self.slots:
            self._step()
        return self.stats

    # --- the loop -------------------------------------------------------------------------

    def _step(self) -> None:
        now = self.clock()
        for slot in [s for s in self.slots if s.cell is None and not self.queues[s.variant]]:
            self._retire(slot)  # nothing left for it: a waiting actor need not wait on
        for slot in [s for s in self.slots if s.call is None and s.retry_at is not None and s.retry_at <= now]:
            slot.retry_at, slot.call, slot.pinged_at = None, slot.actor.ping(), now
        by_call = {s.call: s for s in self.slots if s.call is not None}
        ready = self.pool.wait(list(by_call), timeout=1.0 if by_call else RETRY_PING_S)
        for call in ready:
            slot = by_call[call]
            if slot.cell is None:
                self._on_ping(slot)
            else:
                self._on_cell(slot)
        now = self.clock()
        for slot in [s for s in self.slots if s.cell is not None and s.call is not None]:
            if now - slot.submitted_at > self.cell_timeout_s:
                self._time_out(slot)
        for slot in [
            s for s in self.slots if s.cell is None and s.call is not None and now - s.pinged_at > PLACEMENT_CHECK_S
        ]:
            # An actor still being created waits without failing: ask whether any node could ever host it.
            slot.pinged_at = now
            unplaceable = self.pool.unplaceable(slot.variant)
            if unplaceable:
                self._give_up(slot, f"worker {slot.actor.name} cannot be placed: {unplaceable}")

    def _on_ping(self, slot: Slot) -> None:
        call, slot.call = slot.call, None
        try:
            incarnation = self.pool.result(call)
        except CallFailed as failure:
            self._on_silence(slot, failure.reason)
            return
        if incarnation == slot.stale:  # the process restarted on purpose has not gone yet
            self._rest(slot)
            return
        if slot.waiting_since is not None:
            self.on_message(f"worker {slot.actor.name} is back after {self.clock() - slot.waiting_since:.0f} s")
        slot.incarnation, slot.stale, slot.answered, slot.waiting_since = incarnation, None, True, None
        self._feed(slot)

    def _on_silence(self, slot: Slot, reason: str) -> None:
        """A ping failed: ask the cluster whether the actor is coming back."""
        slot.answered = False
        state = slot.actor.state()
        if state.phase == "dead":
            self._give_up(slot, f"worker {slot.actor.name} is dead for good ({state.detail or reason})")
            return
        unplaceable = self.pool.unplaceable(slot.variant)
        if unplaceable:
            self._give_up(slot, f"worker {slot.actor.name} cannot be placed again: {unplaceable}")
            return
        if slot.waiting_since is None:
            slot.waiting_since = self.clock()
            self.on_message(f"worker {slot.actor.name} is {state.detail or state.phase}; its cells wait for it")
        self._rest(slot)

    def _on_cell(self, slot: Slot) -> None:
        call, cell, slot.call, slot.cell = slot.call, slot.cell, None, None
        try:
            finished = self.pool.result(call)
            lost = False
        except CallFailed as failure:
            finished = outcome_record(
                cell, "failed", f"worker {slot.actor.name} died: {failure.reason}", actor=slot.actor.name
            )
            lost = failure.actor_lost
        if (finished.row.get("error") or "").startswith(CUDA_FATAL):
            slot.actor.kill(restart=True)  # a broken CUDA context: a new process, the same actor
            slot.stale, lost = slot.incarnation, True
        if lost:
            slot.answered = False
            self._await_ready(slot)
        else:
            self._feed(slot)  # the actor's next cell starts before the driver writes this one
        self.stats.busy_cell_s += finished.row.get("cell_s") or 0.0
        self.on_record(finished)

    def _time_out(self, slot: Slot) -> None:
        cell = slot.cell
        error = f"cell ran past cell_timeout_s={self.cell_timeout_s:g}; worker {slot.actor.name} replaced"
        self.on_record(outcome_record(cell, "timeout", error, actor=slot.actor.name))
        slot.actor.kill(restart=False)  # stuck: it cannot report its lifetime
        self.slots.remove(slot)
        self._start(slot.variant)

    # --- actors ---------------------------------------------------------------------------

    def _start(self, variant: Variant) -> None:
        index = self.started.get(variant, 0)
        self.started[variant] = index + 1
        slot = Slot(variant=variant, actor=self.pool.start(variant, index))
        self.slots.append(slot)
        self._await_ready(slot)

    def _await_ready(self, slot: Slot) -> None:
        slot.cell, slot.retry_at, slot.call, slot.pinged_at = None, None, slot.actor.ping(), self.clock()

    def _rest(self, slot: Slot) -> None:
        slot.call, slot.retry_at = None, self.clock() + RETRY_PING_S

    def _feed(self, slot: Slot) -> None:
        queue = self.queues[slot.variant]
        if not queue:
            self._retire(slot)
            return
        slot.cell = queue.pop(0)
        slot.submitted_at = self.clock()
        slot.call = slot.actor.run(slot.cell)
        self.on_start(slot.cell)

    def _retire(self, slot: Slot) -> None:
        lifetime = slot.actor.finish() if slot.answered else None
        if lifetime:
            self.stats.actors.append({**lifetime, "ended_at": time.time(), "name": slot.actor.name})
        slot.actor.kill(restart=False)
        self.slots.remove(slot)

    def _give_up(self, slot: Slot, cause: str) -> None:
        """The actor will not come back. Its variant's other actors, or one fresh actor, take the
        remaining cells; failing that, each gets a record that names the cause."""
        slot.actor.kill(restart=False)
        self.slots.remove(slot)
        variant = slot.variant
        if any(other.variant == variant for other in self.slots):
            return
        if self.fresh_left[variant] > 0 and not self.pool.unplaceable(variant):
            self.fresh_left[variant] -= 1
            self.on_message(f"{cause}; a fresh worker takes its cells")
            self._start(variant)
            return
        for cell in self.queues[variant]:  # none silently dropped
            self.on_record(outcome_record(cell, "failed", cause))
        self.queues[variant].clear()
