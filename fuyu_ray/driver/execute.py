"""Execution on Ray: one actor per model variant keeps a warm model; the scheduler feeds it cells.

A thin layer: the actor wraps the plain CellRunner, and `fuyu_ray.driver.scheduler` decides what
goes where and what a fault costs. This module only says what Ray calls things.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import ray
from ray.exceptions import RayError, RayTaskError

from fuyu_ray.bench import hardware
from fuyu_ray.driver.scheduler import ActorState, CallFailed, ExecutionStats, Scheduler, outcome_record
from fuyu_ray.job.cells import Cell, Variant
from fuyu_ray.job.presets import PRESETS, resolve_attention
from fuyu_ray.storage.records import FinishedCell, error_line, finished_cell

ACTOR_RESTARTS = 2


@ray.remote
class CellWorker:
    """A Ray actor around one CellRunner; heavy imports happen here, counted as model load."""

    def __init__(self, variant: Variant, runner_options: dict, threads: int | None):
        self.started_at = time.time()
        import torch  # in the actor's process only: the driver never loads torch

        if threads:
            torch.set_num_threads(threads)
        from fuyu_ray.bench.standin import runner_class  # torch, in the actor's process only

        context = ray.get_runtime_context()
        node = next((n for n in ray.nodes() if n["NodeID"] == context.get_node_id()), {})
        self.runner = runner_class(variant.model)(
            variant,
            **runner_options,
            context={"node_id": context.get_node_id(), "actor": context.get_actor_name() or variant.label},
            # RAPL counts the whole package: only an actor holding every core may call it its own.
            cpu_package_shared=bool(threads) and threads < node.get("Resources", {}).get("CPU", threads),
        )
        self.load_s = time.time() - self.started_at

    def run(self, cell: Cell):
        result = self.runner.run(cell)
        return finished_cell(result.record, result.samples)

    def ping(self) -> float:
        """Which incarnation answers: a restarted actor has a new start time."""
        return self.started_at

    def finish(self) -> dict:
        """Release the runner's device counters, and say how long this process lived."""
        self.runner.close()
        return {"started_at": self.started_at, "load_s": self.load_s}


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


class RayActor:
    """A CellWorker behind the scheduler's actor protocol."""

    def __init__(self, handle, name: str):
        self.handle, self.name = handle, name

    def run(self, cell: Cell):
        # Named after the cell, so the dashboard's task list (and the process title, which
        # still starts with `ray::CellWorker.run`) reads as the grid.
        return self.handle.run.options(name=f"CellWorker.run {cell.description} [{cell.cell_id}]").remote(cell)

    def ping(self):
        return self.handle.ping.remote()

    def kill(self, restart: bool) -> None:
        try:
            ray.kill(self.handle, no_restart=not restart)
        except RayError:
            pass  # already gone

    def state(self) -> ActorState:
        # Read from the GCS, which every cluster has; the state API would need the dashboard.
        from ray._private.state import actors

        try:
            info = actors(actor_id=self.handle._actor_id.hex())
        except Exception as exc:  # the GCS unreachable for a moment: not a death
            return ActorState("waiting", f"state unknown ({type(exc).__name__})")
        state = info.get("State", "DEAD")
        if state == "DEAD":
            return ActorState("dead", death_cause(info.get("DeathCause")))
        if state == "ALIVE":
            return ActorState("alive", "alive")
        restarts = info.get("NumRestarts", 0)
        detail = {
            "RESTARTING": f"restarting (restart {restarts} of {ACTOR_RESTARTS}), waiting for resources if the "
            "node is full",
            "PENDING_CREATION": "waiting for resources to start",
        }.get(state, state.lower().replace("_", " "))
        return ActorState("waiting", detail)

    def finish(self) -> dict | None:
        try:
            return ray.get(self.handle.finish.remote(), timeout=10)
        except RayError:
            return None


def death_cause(cause) -> str:
    """The first line of Ray's own account of an actor's death."""
    for context in (
        "actor_died_error_context",
        "creation_task_failure_context",
        "runtime_env_failed_context",
        "oom_context",
        "node_death_info",
        "actor_unschedulable_context",
    ):
        try:
            if cause is not None and cause.HasField(context):
                part = getattr(cause, context)
                message = getattr(part, "error_message", "") or getattr(part, "reason_message", "") or str(part)
                return message.strip().splitlines()[0][:300] if message.strip() else context
        except ValueError:
            continue
    return "no restarts left"


class RayPool:
    """Starts CellWorkers with their resources, and reads their calls for the scheduler."""

    def __init__(self, runner_options: dict, cpus_per_actor: int | None):
        self.runner_options, self.cpus_per_actor = runner_options, cpus_per_actor

    def start(self, variant: Variant, index: int) -> RayActor:
        demand = actor_demand(variant, self.cpus_per_actor)
        name = f"{variant.label}-{index}-{int(time.time() * 1000) % 100000}"
        threads = int(demand["CPU"]) if variant.device == "cpu" else None
        handle = CellWorker.options(**actor_options(name, demand)).remote(variant, self.runner_options, threads)
        return RayActor(handle, name)

    def wait(self, calls: list, timeout: float) -> list:
        if not calls:
            time.sleep(timeout)
            return []
        ready, _ = ray.wait(calls, num_returns=1, timeout=timeout)
        return ready

    def result(self, call):
        try:
            return ray.get(call)
        except RayTaskError as exc:  # raised inside the method: the actor itself goes on
            raise CallFailed(error_line(exc, last=True), actor_lost=False) from None
        except RayError as exc:  # actor death, lost objects, Ray's own memory monitor
            raise CallFailed(error_line(exc, last=True), actor_lost=True) from None

    def unplaceable(self, variant: Variant) -> str | None:
        return missing_resources(variant, actor_demand(variant, self.cpus_per_actor))


def skip_reason(variant: Variant, cpus_per_actor: int | None) -> str | None:
    """Why this cluster can never run the variant's cells, or None."""
    return resolve_attention(PRESETS[variant.optimization], variant.device)[1] or missing_resources(
        variant, actor_demand(variant, cpus_per_actor)
    )


def execute(
    cells: list[Cell],
    on_record: Callable[[FinishedCell], None],
    on_start: Callable[[Cell], None],
    runner_options: dict,
    cpus_per_actor: int | None,
    max_actors_per_variant: int | None,
    cell_timeout_s: float,
    on_message: Callable[[str], None] = lambda text: None,
) -> ExecutionStats:
    """Skip what this cluster can never run, then schedule the rest on Ray actors."""
    runnable = []
    reasons: dict[Variant, str | None] = {}  # asked once per variant: it reads the cluster's nodes
    for cell in cells:
        if cell.variant not in reasons:
            reasons[cell.variant] = skip_reason(cell.variant, cpus_per_actor)
        reason = reasons[cell.variant]
        if reason:
            on_record(outcome_record(cell, "skipped", reason))
        else:
            runnable.append(cell)
    scheduler = Scheduler(RayPool(runner_options, cpus_per_actor), on_record, on_start, cell_timeout_s, on_message)
    return scheduler.run(
        runnable, lambda variant: actors_for(actor_demand(variant, cpus_per_actor), max_actors_per_variant)
    )


def actor_options(name: str, demand: dict, environ=os.environ) -> dict:
    custom = {k: v for k, v in demand.items() if k not in ("CPU", "GPU")}
    options = {
        "name": name,
        "num_cpus": demand["CPU"],
        "num_gpus": demand.get("GPU", 0),
        "resources": custom,
        "max_restarts": ACTOR_RESTARTS,
    }
    overrides = hardware.peak_overrides_in(environ)
    if overrides:  # actors inherit their node's environment, not the driver's: pass the measured peaks on
        options["runtime_env"] = {"env_vars": overrides}
    return options
