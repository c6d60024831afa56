"""The tasks: one module each, listed here once. Adding a task is its module and one line below."""

from __future__ import annotations

from fuyu_ray.tasks import ai2d, coco, okvqa, scienceqa, textvqa, vqav2
from fuyu_ray.tasks.base import Task

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        textvqa.TASK,
        scienceqa.TASK,
        coco.TASK,
        vqav2.TASK,
        okvqa.TASK,
        ai2d.TASK,
    )
}


def get_task(name: str) -> Task:
    return TASKS[name]


def tiny_training_tasks() -> list[Task]:
    """The tasks the built-in tiny model learns, in the order above, which fixes its trained weights."""
    return [task for task in TASKS.values() if task.tiny_examples]
