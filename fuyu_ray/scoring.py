"""Scoring: each task's standard metric over a cell's answers, with its 95% interval."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from fuyu_ray import metrics
from fuyu_ray.data import Sample

METRIC_NAMES = {
    "textvqa": "VQA accuracy (EvalAI normalisation, leave-one-out over 10 answers)",
    "scienceqa": "exact option letter (strict)",
    "coco": "CIDEr-D (pycocoevalcap)",
}


@dataclass(frozen=True)
class TaskScore:
    accuracy: float | None
    metric: str
    ci_low: float | None
    ci_high: float | None
    n: int
    per_sample: list[float | None]
    lenient: float | None = None
    per_sample_lenient: list[float] | None = None
    bleu4: float | None = None
    note: str | None = None
    tokenizer: str | None = None


def unscored(task: str, n: int) -> TaskScore:
    return TaskScore(None, METRIC_NAMES[task], None, None, n, [None] * n)


NO_REFERENCES = "this split has no reference answers (a test split often has none): timed, not scored"


def has_reference(sample: Sample) -> bool:
    return bool(sample.references) or sample.answer_index is not None


def score(task: str, samples: Sequence[Sample], predictions: Sequence[str]) -> TaskScore:
    if not samples:
        return TaskScore(None, METRIC_NAMES[task], None, None, 0, [], note="no samples could be scored")
    if not any(has_reference(s) for s in samples):
        return TaskScore(None, METRIC_NAMES[task], None, None, 0, [None] * len(samples), note=NO_REFERENCES)
    if task == "textvqa":
        return _score_textvqa(samples, predictions)
    if task == "scienceqa":
        return _score_scienceqa(samples, predictions)
    return _score_coco(samples, predictions)


def _score_textvqa(samples, predictions) -> TaskScore:
    values = [metrics.vqa_accuracy(p, list(s.references)) for s, p in zip(samples, predictions)]
    low, high = metrics.bootstrap_interval(values)
    return TaskScore(sum(values) / len(values), METRIC_NAMES["textvqa"], low, high, len(values), values)


def _score_scienceqa(samples, predictions) -> TaskScore:
    strict = [metrics.scienceqa_match(p, list(s.choices), s.answer_index) for s, p in zip(samples, predictions)]
    lenient = [
        metrics.scienceqa_match_lenient(p, list(s.choices), s.answer_index) for s, p in zip(samples, predictions)
    ]
    low, high = metrics.wilson_interval(sum(strict), len(strict))
    return TaskScore(
        sum(strict) / len(strict),
        METRIC_NAMES["scienceqa"],
        low,
        high,
        len(strict),
        [float(v) for v in strict],
        lenient=sum(lenient) / len(lenient),
        per_sample_lenient=[float(v) for v in lenient],
    )


def _score_coco(samples, predictions) -> TaskScore:
    ids = [s.sample_id for s in samples]
    scores = metrics.caption_scores(dict(zip(ids, predictions)), {s.sample_id: list(s.references) for s in samples})
    per_sample = [scores.per_sample_cider.get(i) for i in ids]
    if scores.cider is None:
        return TaskScore(
            None, METRIC_NAMES["coco"], None, None, len(ids), per_sample, note=scores.note, tokenizer=scores.tokenizer
        )
    low, high = metrics.bootstrap_interval([v for v in per_sample if v is not None])
    return TaskScore(
        scores.cider,
        METRIC_NAMES["coco"],
        low,
        high,
        len(ids),
        per_sample,
        bleu4=scores.bleu4,
        note=scores.note,
        tokenizer=scores.tokenizer,
    )
