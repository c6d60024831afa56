"""Can a worker resolve a job's model and datasets? Answered without loading either.

A source resolves when it is built in, a local path that is there, in the Hugging Face cache, or
(with HF_HUB_OFFLINE unset) on a hub that answers. The checks run on a worker of each kind the
job needs, since a driver's disk and cache say nothing about a GPU node's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fuyu_ray.job.spec import DatasetSource, is_built_in

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


@dataclass(frozen=True)
class SourceCheck:
    kind: str  # "model" or "dataset <task>"
    source: str
    problem: str | None  # why a worker cannot use it; None when it can
    detail: str  # where it resolves from

    @property
    def line(self) -> str:
        return f"{self.kind} {self.source!r}: {self.problem or self.detail}"


def looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def cached_snapshot(repo_id: str, repo_type: str) -> Path | None:
    """The cached snapshot of a hub repository, if this machine's HF cache has one."""
    from huggingface_hub import snapshot_download  # on the worker that checks; the driver needs none

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, local_files_only=True))
    except Exception:  # not cached, or not a valid repo id: either way, not here
        return None


def from_the_hub(repo_id: str, what: str) -> tuple[str | None, str]:
    """(problem, detail) for something the cache lacks: the hub is the one place left."""
    from huggingface_hub import constants  # on the worker that checks, as above

    from fuyu_ray.bench.models import hub_access  # torch, on the worker only

    local_only, why = hub_access(repo_id)
    if local_only:
        return (
            f"{what} is not in this worker's Hugging Face cache ({constants.HF_HUB_CACHE}), and {why}; "
            "download it into HF_HOME first (see the README, 'Before the seed job')"
        ), ""
    return None, "not cached: the worker will download it from the hub"


def check_model(model: str, weights: str) -> SourceCheck:
    if is_built_in(model):
        return SourceCheck("model", model, None, "built in")
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return SourceCheck("model", model, f"{path} has no config.json: not a transformers checkpoint", "")
        return SourceCheck("model", model, None, f"local folder {path}")
    if looks_like_path(model):
        return SourceCheck("model", model, f"no such folder {path} on this worker", "")
    snapshot = cached_snapshot(model, "model")
    if weights == "random":  # config and processor help, but the built-in stand-ins do without
        return SourceCheck("model", model, None, f"random weights; config {'cached' if snapshot else 'built in'}")
    if snapshot and any(next(snapshot.glob(p), None) for p in WEIGHT_PATTERNS):
        return SourceCheck("model", model, None, f"HF cache {snapshot}")
    problem, detail = from_the_hub(model, "its weights" if snapshot else "it")
    return SourceCheck("model", model, problem, detail)


def check_dataset(task: str, source: DatasetSource) -> SourceCheck:
    from fuyu_ray.bench.data import (  # datasets, on the worker only
        DatasetNotFound,
        is_local_folder,
        resolve_local_folder,
    )

    kind, name = f"dataset {task}", source.source
    if name == "synthetic":
        return SourceCheck(kind, name, None, "built in")
    path = Path(name).expanduser()
    if path.exists():
        if is_local_folder(source):
            try:
                layout = resolve_local_folder(task, source)
            except DatasetNotFound as exc:
                return SourceCheck(kind, name, str(exc), "")
            return SourceCheck(kind, name, None, f"local folder, split {layout.split}, {len(layout.files)} files")
        return SourceCheck(kind, name, None, f"local {path}")
    if looks_like_path(name):
        return SourceCheck(kind, name, f"no such folder {path} on this worker", "")
    if cached_snapshot(name, "dataset"):
        return SourceCheck(kind, name, None, "HF cache")
    problem, detail = from_the_hub(name, "it")
    return SourceCheck(kind, name, problem, detail)


def check_sources(model: str, weights: str, datasets: dict[str, DatasetSource]) -> list[SourceCheck]:
    """Every source a job's worker would read, checked where it runs."""
    return [check_model(model, weights)] + [check_dataset(task, source) for task, source in sorted(datasets.items())]
