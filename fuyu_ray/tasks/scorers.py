"""The scorers tasks share: VQA accuracy, the option letter, and captions; each with its 95% interval."""

from __future__ import annotations

from typing import Sequence

from fuyu_ray.tasks import caption_metrics, metrics
from fuyu_ray.tasks.base import Sample, Scoring, TaskScore

VQA_METRIC = "VQA accuracy (EvalAI normalisation, leave-one-out over 10 answers)"
VQA_LEGEND = "VQA accuracy in % (EvalAI normalisation, min(1, matches/3) over 10 leave-one-out subsets)"
OPTION_METRIC = "exact option letter (strict)"
OPTION_LEGEND = "exact option letter in % (strict; the lenient figure is `accuracy_lenient` in cells.parquet)"
CAPTION_METRIC = "CIDEr-D (pycocoevalcap)"
CAPTION_LEGEND = "CIDEr-D x 1 (pycocoevalcap, document frequencies from the scored set; BLEU-4 in cells.parquet)"


def vqa_accuracy(samples: Sequence[Sample], predictions: Sequence[str]) -> TaskScore:
    values = [metrics.vqa_accuracy(p, list(s.references)) for s, p in zip(samples, predictions)]
    low, high = metrics.bootstrap_interval(values)
    return TaskScore(sum(values) / len(values), VQA_METRIC, low, high, len(values), values)


def option_letter(samples: Sequence[Sample], predictions: Sequence[str]) -> TaskScore:
    strict = [metrics.option_match(p, list(s.choices), s.answer_index) for s, p in zip(samples, predictions)]
    lenient = [metrics.option_match_lenient(p, list(s.choices), s.answer_index) for s, p in zip(samples, predictions)]
    low, high = metrics.wilson_interval(sum(strict), len(strict))
    return TaskScore(
        sum(strict) / len(strict),
        OPTION_METRIC,
        low,
        high,
        len(strict),
        [float(v) for v in strict],
        lenient=sum(lenient) / len(lenient),
        per_sample_lenient=[float(v) for v in lenient],
    )


def caption_cider(samples: Sequence[Sample], predictions: Sequence[str]) -> TaskScore:
    ids = [s.sample_id for s in samples]
    scores = caption_metrics.caption_scores(
        dict(zip(ids, predictions)), {s.sample_id: list(s.references) for s in samples}
    )
    per_sample = [scores.per_sample_cider.get(i) for i in ids]
    if scores.cider is None:
        return TaskScore(
            None, CAPTION_METRIC, None, None, len(ids), per_sample, note=scores.note, tokenizer=scores.tokenizer
        )
    low, high = metrics.bootstrap_interval([v for v in per_sample if v is not None])
    return TaskScore(
        scores.cider,
        CAPTION_METRIC,
        low,
        high,
        len(ids),
        per_sample,
        bleu4=scores.bleu4,
        note=scores.note,
        tokenizer=scores.tokenizer,
    )


def option_answer(sample: Sample) -> str:
    return "ABCD"[sample.answer_index]


def first_reference(sample: Sample) -> str:
    return sample.references[0]


VQA = Scoring(VQA_METRIC, VQA_LEGEND, 100, "accuracy", vqa_accuracy, first_reference)
OPTION_LETTER = Scoring(OPTION_METRIC, OPTION_LEGEND, 100, "accuracy", option_letter, option_answer, paired=True)
CAPTION = Scoring(CAPTION_METRIC, CAPTION_LEGEND, 1, "CIDEr-D", caption_cider, first_reference)
