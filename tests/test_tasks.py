"""Tasks: each is one module in `fuyu_ray/tasks`, and nothing outside that folder tells one from another."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

from fuyu_ray.bench.data import load_samples
from fuyu_ray.bench.prompts import TaskSettings, build_prompt
from fuyu_ray.job.spec import DatasetSource, TaskOverride
from fuyu_ray.tasks import TASKS, get_task, tiny_training_tasks
from fuyu_ray.tasks.base import NO_REFERENCES, score_answers, synthetic_rows
from fuyu_ray.tasks.synthetic import EVAL_SPLIT

NAMES = tuple(TASKS)


def test_no_module_outside_the_tasks_names_a_task():
    """A per-task branch anywhere else would make adding a task touch more than its own file."""
    quoted = re.compile(r"""["'](%s)["']""" % "|".join(NAMES))
    offenders = []
    for layer in ("job", "bench", "driver"):
        for path in sorted((ROOT / "fuyu_ray" / layer).glob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if quoted.search(line) and "TARGET_DATASET =" not in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize("name", NAMES)
def test_the_training_answer_scores_full_marks_and_a_wrong_one_none(name):
    task = get_task(name)
    samples = load_samples(name, DatasetSource("synthetic"), limit=6).samples
    right = score_answers(task, samples, [task.scoring.training_answer(s) for s in samples])
    wrong = score_answers(task, samples, ["zebra crossing"] * len(samples))
    if name == "coco":  # CIDEr-D is not bounded by 1; a wrong caption still scores 0
        assert right.accuracy > 1.0 and wrong.accuracy == 0.0
    else:
        assert (right.accuracy, wrong.accuracy) == (1.0, 0.0)
    assert right.n == len(samples) == 6 and right.metric == task.scoring.metric


@pytest.mark.parametrize("name", NAMES)
def test_a_row_without_references_is_timed_not_scored(name):
    task = get_task(name)
    row = synthetic_rows(task, 1, EVAL_SPLIT)[0]
    for key in ("answers", "answer"):
        if key in row:
            row[key] = None
    sample = task.to_sample(row, 0)
    result = score_answers(task, [sample], ["anything"])
    assert result.accuracy is None and result.note == NO_REFERENCES


# lmms-eval's prompts for these tasks (its task YAML files' pre/post prompts, default model entry).
LMMS_EVAL_PROMPTS = {
    "vqav2": "What shape is this?\nAnswer the question using a single word or phrase.\n",
    "okvqa": (
        "How many sides does this shape have?\nWhen the provided information is insufficient, respond with "
        "'Unanswerable'.\nAnswer the question using a single word or phrase.\n"
    ),
    "ai2d": (
        "Which shape does the diagram show?\nA. triangle\nB. line\nC. square\nD. circle\n"
        "Answer with the option's letter from the given choices directly.\n"
    ),
}


@pytest.mark.parametrize("name", sorted(LMMS_EVAL_PROMPTS))
def test_new_tasks_ask_as_lmms_eval_does(name):
    samples = load_samples(name, DatasetSource("synthetic"), limit=8).samples
    sample = next(s for s in samples if s.question in LMMS_EVAL_PROMPTS[name])
    prompt = build_prompt(TaskSettings.for_task(name, TaskOverride()), sample, 10_000, lambda text: 0)
    assert prompt.text == LMMS_EVAL_PROMPTS[name]


def test_hub_schemas_become_samples():
    """Rows as the hub's dataset cards define them: VQAv2's answers are records, OK-VQA's strings,
    AI2D's answer an option index written as a string."""
    vqav2 = get_task("vqav2").to_sample(
        {
            "question_id": 262148000,
            "question": "Where is he looking?",
            "image": _png(),
            "answers": [{"answer": "down", "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)],
            "multiple_choice_answer": "down",
        },
        0,
    )
    assert vqav2.sample_id == "262148000" and vqav2.references == ("down",) * 10
    okvqa = get_task("okvqa").to_sample(
        {"question_id": "2971475", "question": "What sport?", "image": _png(), "answers": ["racing"] * 10}, 0
    )
    assert okvqa.references == ("racing",) * 10
    ai2d = get_task("ai2d").to_sample(
        {"question": "Which stage?", "options": ["egg", "larva", "pupa", "adult"], "answer": "2", "image": _png()}, 0
    )
    assert ai2d.choices == ("egg", "larva", "pupa", "adult") and ai2d.answer_index == 2
    assert score_answers(get_task("ai2d"), [ai2d], ["C"]).accuracy == 1.0
    assert score_answers(get_task("vqav2"), [vqav2], ["Down."]).accuracy == 1.0


def test_vqav2_keeps_each_of_the_ten_human_answers_and_scores_against_all_of_them():
    """Real rows disagree: 4 annotators said "down", 3 "floor", 3 "ground". The consensus answer
    alone would score "floor" 0; VQA accuracy over the ten gives it min(1, 3/3) averaged over the
    ten leave-one-out subsets: (3 x 2/3 + 7 x 1) / 10 = 0.9."""
    answers = ["down"] * 4 + ["floor"] * 3 + ["ground"] * 3
    vqav2 = get_task("vqav2").to_sample(
        {
            "question_id": 262148001,
            "question": "Where is he looking?",
            "image": _png(),
            "answers": [
                {"answer": answer, "answer_confidence": "yes", "answer_id": i} for i, answer in enumerate(answers, 1)
            ],
            "multiple_choice_answer": "down",
        },
        0,
    )
    assert vqav2.references == tuple(answers)
    scores = score_answers(get_task("vqav2"), [vqav2] * 3, ["down", "floor", "up"]).per_sample
    assert scores == pytest.approx([1.0, 0.9, 0.0])


def test_tiny_learns_the_seed_tasks_only():
    """Its weights are fixed by what it learns: a new task joins only by asking to (tiny_examples)."""
    assert [task.name for task in tiny_training_tasks()] == ["textvqa", "scienceqa", "coco"]


def _png() -> dict:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def test_a_model_card_job_puts_the_published_figures_beside_ours(tmp_path):
    """The new tasks through the real driver, Ray and the tiny model, on their synthetic rows; the
    summary's table agrees with cells.parquet."""
    import polars as pl
    from conftest import run_grid, write_job

    published = (
        "published:\n"
        "  source: a model card\n"
        "  note: Prompts unknown.\n"
        "  figures: {vqav2: 74.2, okvqa: 60.6, coco: 141, ai2d: 64.5, textvqa: 50}\n"
    )
    job = write_job(
        tmp_path, "card", "tiny", "  card: {dataset: [vqav2, okvqa, coco, ai2d]}\n", extra="limit: 4\n" + published
    )
    out = tmp_path / "out"
    result = run_grid("--job", str(job), "--out", str(out))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    cells = pl.read_parquet(out / "cells.parquet")
    assert sorted(cells.get_column("dataset").to_list()) == ["ai2d", "coco", "okvqa", "vqav2"]
    assert cells.get_column("accuracy").null_count() == 0
    summary = (out / "summary.md").read_text()
    assert "## Beside the published figures" in summary and "Published: a model card." in summary
    section = summary.split("## Beside the published figures")[1].split("\n## ")[0]
    for row in cells.to_dicts():
        ours = row["accuracy"] * 100
        figure = {"vqav2": 74.2, "okvqa": 60.6, "coco": 141, "ai2d": 64.5}[row["dataset"]]
        line = next(line for line in section.splitlines() if line.startswith(f"| {get_task(row['dataset']).title} |"))
        assert f"| {figure:g} | {ours:.1f} [" in line and f"| {ours - figure:+.1f} |" in line, line
        assert line.endswith(f"| lmms-eval's | {row['cell_id']} |")
    assert "| TextVQA | 50 | not measured in this run |" in section
