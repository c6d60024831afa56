import shutil

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from fuyu_ray.tasks import caption_metrics
from fuyu_ray.tasks.caption_metrics import CaptionScores, caption_scores, cider, python_ptb_tokenize
from fuyu_ray.tasks.metrics import (
    bootstrap_interval,
    normalize_vqa_answer,
    option_match,
    option_match_lenient,
    vqa_accuracy,
    wilson_interval,
)

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="PTBTokenizer needs java")


# --------------------------------------------------------------------------- VQA normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("two", "2"),
        ("none", "0"),
        ("Ten", "10"),
        ("the dog", "dog"),
        ("A Dog", "dog"),
        ("an apple", "apple"),
        ("1,000", "1000"),
        ("Nike's", "nike 's"),
        ("nikes", "nikes"),
        ("yes.", "yes"),
        ("yes\n", "yes"),
        ("\tyes \n", "yes"),
        ("e-mail", "e mail"),
        ("e - mail", "e mail"),
        ("u.s.a.", "usa"),
        ("U.S.A", "usa"),
        ("3.5", "3.5"),
        ("3.5.", "3.5"),
        ("dont", "don't"),
        ("whats up", "what's up"),
        ("red, blue", "red blue"),
        ("red,blue", "redblue"),
        ("hello?", "hello"),
        # Commas go first, so "1,000" and "1000" meet; the hyphen then becomes a space.
        ("1,000-2,000", "1000 2000"),
    ],
)
def test_normalize_vqa_answer(raw, expected):
    assert normalize_vqa_answer(raw) == expected


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ("two", "2"),
        ("the dog", "dog"),
        ("1,000", "1000"),
        ("Nike's", "nike's"),
        ("yes.", "yes"),
        ("yes\n", "yes"),
        ("e-mail", "e mail"),
        ("USA", "u.s.a."),
        ("3.5", "3.5"),
    ],
)
def test_equivalent_answers_score_one(prediction, reference):
    assert vqa_accuracy(prediction, [reference] * 10) == 1.0


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [("nike's", "nikes"), ("e-mail", "email"), ("3.5", "35"), ("dog", "dogs")],
)
def test_different_answers_score_zero(prediction, reference):
    assert vqa_accuracy(prediction, [reference] * 10) == 0.0


@pytest.mark.parametrize(
    ("n_matching", "expected"),
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_vqa_leave_one_out_values(n_matching, expected):
    answers = ["cat"] * n_matching + ["dog"] * (10 - n_matching)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected, abs=1e-12)


def test_vqa_matches_evalai_loop():
    answers = ["Two", "2", "two.", "3", "three", "2 ", "4", "four", "the 2", "5"]

    def evalai_loop(pred, gts):
        pred = normalize_vqa_answer(pred)
        gts = [normalize_vqa_answer(g) for g in gts]
        accs = [min(1, sum(g == pred for j, g in enumerate(gts) if j != i) / 3) for i in range(len(gts))]
        return sum(accs) / len(accs)

    for pred in ["2", "3", "4", "5", "6"]:
        assert vqa_accuracy(pred, answers) == pytest.approx(evalai_loop(pred, answers))
    assert vqa_accuracy("2", answers) == 1.0  # five references normalise to "2"


def test_vqa_small_reference_lists():
    assert vqa_accuracy("Yes.", ["yes"]) == 1.0
    assert vqa_accuracy("no", ["yes"]) == 0.0
    # Two agreeing references: each annotator sees one matching peer.
    assert vqa_accuracy("yes", ["yes", "yes"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        vqa_accuracy("yes", [])


# --------------------------------------------------------------------------- ScienceQA

CHOICES = ["Ohio", "Texas", "Maine"]


@pytest.mark.parametrize(
    ("prediction", "strict", "lenient"),
    [
        ("B", True, True),
        ("b", True, True),
        (" B \n", True, True),
        ("B.", True, True),
        ("B. Texas", True, True),
        ("b.", False, True),
        ("b. Texas", False, False),
        ("(B)", False, True),
        ("B)", False, True),
        ("The answer is B", False, True),
        ("The answer is B.", False, True),
        ("the answer is (B)", False, True),
        ("Texas", False, True),
        ("  texas ", False, True),
        ("A", False, False),
        ("A. Ohio", False, False),
        ("(A)", False, False),
        ("The answer is C", False, False),
        ("Ohio", False, False),
        ("Texas is the answer", False, False),
        ("", False, False),
        ("Bb", False, False),
    ],
)
def test_scienceqa_strict_and_lenient(prediction, strict, lenient):
    assert option_match(prediction, CHOICES, 1) is strict
    assert option_match_lenient(prediction, CHOICES, 1) is lenient


def test_scienceqa_lenient_contains_strict():
    preds = ["A", "a", "B", "b", "C.", "c.", "B. x", "A.B", "(C)", "Texas", "B.", " D ", "B:"]
    for answer in range(len(CHOICES)):
        for pred in preds:
            if option_match(pred, CHOICES, answer):
                assert option_match_lenient(pred, CHOICES, answer)


def test_scienceqa_rejects_bad_answer_index():
    with pytest.raises(ValueError):
        option_match("A", CHOICES, 3)
    with pytest.raises(ValueError):
        option_match_lenient("A", CHOICES, -1)


# --------------------------------------------------------------------------- captioning

# Raw captions chosen so the hand-tokenised version below is unambiguous.
RAW_PREDS = {
    1: "A man riding a horse on the beach.",
    2: "Two dogs playing with a ball.",
    3: "A plate of food, with broccoli!",
    4: "A red bus parked on the street",
}
RAW_REFS = {
    1: ["A man rides a horse along the beach.", "A person on a horse near the ocean.", "Man riding horse at the beach"],
    2: ["Two dogs play with a red ball.", "A pair of dogs chase a ball.", "Dogs playing in the grass"],
    3: ["A plate with broccoli and rice.", "Food on a white plate.", "A dish of broccoli, chicken and rice"],
    4: ["A red double decker bus on a street.", "A bus parked by the curb.", "The red bus is parked on the street"],
}


def _hand_tokenised():
    def tok(s):
        return s.lower().replace(".", "").replace(",", "").replace("!", "")

    res = {k: [tok(v)] for k, v in RAW_PREDS.items()}
    gts = {k: [tok(r) for r in refs] for k, refs in RAW_REFS.items()}
    return gts, res


def test_cider_matches_pycocoevalcap_on_hand_tokenised():
    gts, res = _hand_tokenised()
    expected, expected_per_image = Cider().compute_score(gts, res)
    scores = caption_scores(RAW_PREDS, RAW_REFS, tokenizer="python")
    assert isinstance(scores, CaptionScores)
    assert scores.tokenizer == "python"
    assert scores.note is None
    assert scores.cider == pytest.approx(expected, rel=1e-12)
    assert 0 < scores.cider < 10
    assert [scores.per_sample_cider[k] for k in gts] == pytest.approx(list(expected_per_image))
    assert np.mean(list(scores.per_sample_cider.values())) == pytest.approx(scores.cider)
    assert cider(RAW_PREDS, RAW_REFS, tokenizer="python") == pytest.approx(expected)


def test_bleu4_matches_pycocoevalcap_on_hand_tokenised():
    gts, res = _hand_tokenised()
    expected = Bleu(4).compute_score(gts, res, verbose=0)[0][3]
    assert caption_scores(RAW_PREDS, RAW_REFS, tokenizer="python").bleu4 == pytest.approx(expected)


def test_perfect_caption_beats_wrong_caption():
    preds = dict(RAW_PREDS)
    preds[2] = "A bowl of soup on a table"
    worse = caption_scores(preds, RAW_REFS, tokenizer="python")
    better = caption_scores(RAW_PREDS, RAW_REFS, tokenizer="python")
    assert worse.per_sample_cider[2] < better.per_sample_cider[2]


def test_fewer_than_two_images():
    one_pred, one_ref = {1: RAW_PREDS[1]}, {1: RAW_REFS[1]}
    scores = caption_scores(one_pred, one_ref, tokenizer="python")
    assert scores.cider is None and scores.bleu4 is None
    assert scores.per_sample_cider == {}
    assert "at least 2 images" in scores.note
    with pytest.raises(ValueError, match="at least 2 images"):
        cider(one_pred, one_ref)


def test_caption_input_validation():
    with pytest.raises(ValueError):
        caption_scores({1: "a", 2: "b"}, {1: ["a"], 3: ["b"]}, tokenizer="python")
    with pytest.raises(ValueError):
        caption_scores({1: "a", 2: "b"}, {1: ["a"], 2: []}, tokenizer="python")
    with pytest.raises(ValueError):
        caption_scores(RAW_PREDS, RAW_REFS, tokenizer="spacy")


def test_tokenizer_fallback_without_java(monkeypatch):
    monkeypatch.setattr(caption_metrics.shutil, "which", lambda _: None)
    assert caption_scores(RAW_PREDS, RAW_REFS).tokenizer == "python"
    with pytest.raises(RuntimeError):
        caption_scores(RAW_PREDS, RAW_REFS, tokenizer="ptb-java")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A man riding a horse.", "a man riding a horse"),
        ("Two dogs (brown) playing, on the grass!", "two dogs -lrb- brown -rrb- playing on the grass"),
        ("It's the man's dog; don't touch it...", "it 's the man 's dog do n't touch it"),
        ("An e-mail from the U.S.A. office", "an e-mail from the u.s.a. office"),
        ("3.5 apples and/or 1,000 pears -- nice", "3.5 apples and/or 1,000 pears nice"),
        ('A sign that says "stop."', "a sign that says stop"),
        ("the dogs' bones", "the dogs bones"),
        ("price is $5.00 or 50%", "price is $ 5.00 or 50 %"),
        ("i can't.", "i ca n't"),
        ("wow?!", "wow ?!"),
        ("dr. who", "dr. who"),
        ("it\u2019s a \u201cbig\u201d dog\u2026", "it 's a big dog"),
    ],
)
def test_python_tokenizer_follows_ptb(raw, expected):
    # Expected strings were produced by pycocoevalcap's Java PTBTokenizer.
    assert python_ptb_tokenize(raw) == expected


@needs_java
def test_python_and_java_tokenizers_agree():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = [c for refs in RAW_REFS.values() for c in refs] + list(RAW_PREDS.values())
    java = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    assert [python_ptb_tokenize(c) for c in captions] == [java[i][0] for i in range(len(captions))]

    via_java = caption_scores(RAW_PREDS, RAW_REFS, tokenizer="ptb-java")
    via_python = caption_scores(RAW_PREDS, RAW_REFS, tokenizer="python")
    assert via_java.tokenizer == "ptb-java"
    assert via_java.cider == pytest.approx(via_python.cider, rel=1e-12)
    assert via_java.bleu4 == pytest.approx(via_python.bleu4, rel=1e-12)


# --------------------------------------------------------------------------- intervals


def test_wilson_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4)
    assert hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == 1.0
    assert wilson_interval(50, 100, z=2.576)[0] < wilson_interval(50, 100)[0]


def test_wilson_rejects_bad_input():
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_bootstrap_reproducible_and_contains_mean():
    values = list(np.random.default_rng(123).normal(0.5, 0.2, size=200))
    a = bootstrap_interval(values, seed=7)
    assert a == bootstrap_interval(values, seed=7)
    assert a != bootstrap_interval(values, seed=8)
    lo, hi = a
    assert lo < np.mean(values) < hi
    # Roughly mean +- 1.96 * sd / sqrt(n).
    assert hi - lo == pytest.approx(2 * 1.96 * np.std(values) / np.sqrt(200), rel=0.2)
    narrow = bootstrap_interval(values, seed=7, level=0.5)
    assert a[0] < narrow[0] < narrow[1] < a[1]


def test_bootstrap_edge_cases():
    assert bootstrap_interval([0.25]) == (0.25, 0.25)
    assert bootstrap_interval([1.0, 1.0, 1.0]) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_interval([])
    with pytest.raises(ValueError):
        bootstrap_interval([1.0, 2.0], level=1.0)


def test_the_bootstrap_interval_has_the_asked_level_and_draws_every_value():
    values = [1.0] + [0.0] * 19  # the one non-zero value is the first: a resampler that skips it shows no spread
    low, high = bootstrap_interval(values, n_resamples=4000, seed=1)
    assert low == 0.0 and high >= 0.1  # a mean of 0.05 reaches 0.15 in 2.5% of resamples of 20
    wide_low, wide_high = bootstrap_interval(list(range(100)), n_resamples=4000, seed=1, level=0.5)
    narrow = bootstrap_interval(list(range(100)), n_resamples=4000, seed=1, level=0.95)
    assert narrow[0] < wide_low < wide_high < narrow[1]  # a 50% interval sits inside the 95% one
    assert 49.5 - 2.3 < wide_low < 49.5 - 1.6 and 49.5 + 1.6 < wide_high < 49.5 + 2.3  # +-0.674 standard errors (1.95)
