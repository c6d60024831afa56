"""Execution on Ray: one actor per model variant keeps a warm model; the driver feeds it cells.

A thin layer over the plain CellRunner. Each actor has at most one cell in flight, so a
crash, an out-of-memory error or a timeout is charged to exactly one cell, and the next
cell goes to a restarted or replaced actor.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from fuyu_ray import hardware
from fuyu_ray.cells import Cell, Variant
from fuyu_ray.presets import PRESETS, resolve_attention
from fuyu_ray.records import CUDA_FATAL, cell_batch, outcome_row, sample_table

ACTOR_RESTARTS = 2
REVIVAL_PINGS = ACTOR_RESTARTS + 3  # a ping can also fail while the old process is still being torn down


@ray.remote
class CellWorker:
    """A Ray actor around one CellRunner; heavy imports happen here, counted as model load."""

    def __init__(self, variant: Variant, min_energy_window_s: float, threads: int | None):
        self.started_at = time.time()
        import torch

        if threads:
            torch.set_num_threads(threads)
        from fuyu_ray.runner import CellRunner
        from fuyu_ray.standin import StandInRunner, is_standin

        context = ray.get_runtime_context()
        node = next((n for n in ray.nodes() if n["NodeID"] == context.get_node_id()), {})
        runner_class = StandInRunner if is_standin(variant.model) else CellRunner
        self.runner = runner_class(
            variant,
            min_energy_window_s=min_energy_window_s,
            context={"node_id": context.get_node_id(), "actor": context.get_actor_name() or variant.label},
            # RAPL counts the whole package: only an actor holding every core may call it its own.
            cpu_package_shared=bool(threads) and threads < node.get("Resources", {}).get("CPU", threads),
        )
        self.load_s = time.time() - self.started_at

    def run(self, cell: Cell):
        result = self.runner.run(cell)
        return result.record, result.samples

    def ping(self) -> float:
        """Which incarnation answers: a restarted actor has a new start time."""
        return self.started_at

    def lifetime(self) -> dict:
        return {"started_at": self.started_at, "load_s": self.load_s}


@dataclass
class Slot:
    """One live actor and the cell it is running."""

    variant: Variant
    actor: object
    name: str
    cell: Cell | None = None
    submitted_at: float = 0.0
    ref: object = None
    revivals: int = 0  # pings sent since the actor last answered
    incarnation: float | None = None  # the start time of the process that last answered
    stale: float | None = None  # an incarnation we killed: its answers do not count


@dataclass
class ExecutionStats:
    actors: list[dict] = field(default_factory=list)  # started_at, ended_at, load_s per actor
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


def node_resources() -> list[dict]:
    """The resources of every live node, read now: nodes come and go during a run."""
    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def missing_resources(variant: Variant, demand: dict) -> str | None:
    """Why the cluster can never run this variant, or None; so such cells are skipped, not waited on."""
    for resources in node_resources():
        if all(resources.get(k, 0) >= v for k, v in demand.items()):
            return None
    wanted = ", ".join(f"{k}={v:g}" for k, v in demand.items())
    return f"no node in the cluster has {wanted} (device {variant.device})"


def actors_for(demand: dict, max_actors_per_variant: int | None) -> int:
    """The job's cap, or with none, as many actors as the cluster has room for at once."""
    if max_actors_per_variant:
        return max_actors_per_variant
    room = sum(min(int(resources.get(k, 0) // v) for k, v in demand.items()) for resources in node_resources())
    return max(1, room)


BENCH_NODE = "bench_node"


def actor_demand(variant: Variant, cpus_per_actor: int | None) -> dict:
    if variant.device == "cuda":
        # Where the cluster marks bench nodes, timed GPU cells run only there (a sliver each,
        # so the node's GPUs, not this resource, bound how many run at once).
        marked = any(resources.get(BENCH_NODE) for resources in node_resources())
        return {"CPU": 1, "GPU": 1, **({BENCH_NODE: 0.001} if marked else {})}
    largest = max((resources.get("CPU", 0) for resources in node_resources()), default=1)
    return {"CPU": min(cpus_per_actor or largest, largest) or 1}


def execute(
    cells: list[Cell],
    on_record: Callable,
    on_start: Callable[[Cell], None],
    min_energy_window_s: float,
    cpus_per_actor: int | None,
    max_actors_per_variant: int | None,
    cell_timeout_s: float,
) -> ExecutionStats:
    stats = ExecutionStats()
    queues: dict[Variant, list[Cell]] = {}
    for cell in cells:
        queues.setdefault(cell.variant, []).append(cell)

    slots: list[Slot] = []
    for variant, queue in queues.items():
        demand = actor_demand(variant, cpus_per_actor)
        reason = resolve_attention(PRESETS[variant.optimization], variant.device)[1] or missing_resources(variant, demand)
        if reason:
            for cell in queue:
                on_record(cell_batch(outcome_row(cell.settings(), "skipped", reason)), sample_table([]))
            queue.clear()
            continue
        for index in range(min(actors_for(demand, max_actors_per_variant), len(queue))):
            slots.append(_start_actor(variant, index, demand, min_energy_window_s))

    def feed(slot: Slot) -> None:
        queue = queues[slot.variant]
        if queue:
            slot.cell = queue.pop(0)
            slot.submitted_at = time.monotonic()
            slot.ref = slot.actor.run.remote(slot.cell)
            on_start(slot.cell)
        else:
            _retire(slot, stats)
            slots.remove(slot)

    def await_ready(slot: Slot) -> None:
        """Ping before feeding: a cell's timeout must not run while its actor waits for resources,
        loads its model, or is being restarted after a crash."""
        slot.cell, slot.revivals = None, slot.revivals + 1
        if slot.revivals <= REVIVAL_PINGS:
            slot.ref = slot.actor.ping.remote()
            return
        slots.remove(slot)
        if any(other.variant == slot.variant for other in slots):
            return  # the variant's other actors take its remaining cells
        for cell in queues[slot.variant]:  # none silently dropped
            on_record(cell_batch(outcome_row(cell.settings(), "failed", f"worker {slot.name} kept dying; no restarts left")), sample_table([]))
        queues[slot.variant].clear()

    def replace(slot: Slot) -> None:
        ray.kill(slot.actor)  # stuck, so it cannot report its lifetime
        replacement = _start_actor(slot.variant, len(stats.actors) + len(slots), actor_demand(slot.variant, cpus_per_actor), min_energy_window_s)
        slots[slots.index(slot)] = replacement
        await_ready(replacement)

    for slot in slots:
        await_ready(slot)
    while slots:
        in_flight = {slot.ref: slot for slot in slots}
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
        for ref in ready:
            slot = in_flight[ref]
            if slot.cell is None:
                try:
                    incarnation = ray.get(ref)
                except RayError:
                    await_ready(slot)
                    continue
                if incarnation == slot.stale:  # the killed process has not gone yet
                    slot.ref = slot.actor.ping.remote()
                    continue
                slot.incarnation, slot.stale, slot.revivals = incarnation, None, 0
                feed(slot)
                continue
            record, samples, died = _collect(slot)
            if (record.column("error")[0].as_py() or "").startswith(CUDA_FATAL):
                ray.kill(slot.actor, no_restart=False)  # a broken CUDA context: restart the process
                slot.stale, died = slot.incarnation, True
            if died:
                await_ready(slot)
            else:
                feed(slot)  # the actor's next cell starts before the driver writes this one
            stats.busy_cell_s += record.column("cell_s")[0].as_py() or 0.0
            on_record(record, samples)
        running = [s for s in slots if s.cell is not None and s.ref not in ready]
        for slot in [s for s in running if time.monotonic() - s.submitted_at > cell_timeout_s]:
            on_record(*_timed_out(slot, cell_timeout_s))
            replace(slot)
    return stats


def _start_actor(variant: Variant, index: int, demand: dict, min_energy_window_s: float) -> Slot:
    name = f"{variant.label}-{index}-{int(time.time() * 1000) % 100000}"
    threads = int(demand["CPU"]) if variant.device == "cpu" else None
    actor = CellWorker.options(**actor_options(name, demand)).remote(variant, min_energy_window_s, threads)
    return Slot(variant=variant, actor=actor, name=name)


def actor_options(name: str, demand: dict, environ=os.environ) -> dict:
    custom = {k: v for k, v in demand.items() if k not in ("CPU", "GPU")}
    options = {"name": name, "num_cpus": demand["CPU"], "num_gpus": demand.get("GPU", 0), "resources": custom,
               "max_restarts": ACTOR_RESTARTS}
    overrides = hardware.peak_overrides_in(environ)
    if overrides:  # actors inherit their node's environment, not the driver's: pass the measured peaks on
        options["runtime_env"] = {"env_vars": overrides}
    return options


def _collect(slot: Slot):
    """The cell's records and whether the actor died; a dead actor is one failed record for its cell."""
    try:
        record, samples = ray.get(slot.ref)
        return record, samples, False
    except RayError as exc:  # actor death, lost objects, Ray's own memory monitor: one failed record
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:400]}"
        row = outcome_row(slot.cell.settings(), "failed", f"worker {slot.name} died: {reason}", actor=slot.name)
        return cell_batch(row), sample_table([]), not isinstance(exc, RayTaskError)


def _timed_out(slot: Slot, limit: float):
    row = outcome_row(slot.cell.settings(), "timeout", f"cell ran past cell_timeout_s={limit:g}; worker {slot.name} replaced", actor=slot.name)
    return cell_batch(row), sample_table([])


def _retire(slot: Slot, stats: ExecutionStats) -> None:
    try:
        lifetime = ray.get(slot.actor.lifetime.remote(), timeout=10)
        stats.actors.append({**lifetime, "ended_at": time.time(), "name": slot.name})
    except (RayActorError, GetTimeoutError):
        pass
    ray.kill(slot.actor)
