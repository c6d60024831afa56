"""Accuracy metrics for the benchmark tasks: TextVQA/VQAv2 accuracy, ScienceQA option matching, and
confidence intervals (captioning scores are in caption_metrics.py).

Pure Python + numpy so that scoring can run on a driver or a laptop without torch, Ray or a GPU.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# Order matters: EvalAI walks this list and decides per character whether to
# delete it or turn it into a space. The apostrophe is deliberately absent, so
# "nike's" survives normalisation unchanged.
_VQA_PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)


# Commas are already gone by the time this is consulted (the tokenize step
# deletes them), so in practice it never matches; kept as EvalAI has it.
_COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d)(,)+(?=\d)")


# As in EvalAI. "(?!<=\d)" was meant as a lookbehind but is a lookahead that
# never fails, so in effect: a "." not followed by a digit.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"(?!<=\d)(\.)(?!\d)")


# EvalAI passes re.UNICODE (== 32) where sub() expects its *count*, so only
# the first 32 such periods are deleted; reproduced for identical output.
_MAX_PERIODS_STRIPPED = 32


_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}


_ARTICLES = frozenset({"a", "an", "the"})


# EvalAI's contraction table, entry for entry as MMF and lmms-eval ship it,
# quirks included. It is consulted after the answer has been lower-cased and
# after "'s" has been split off into " 's", so some entries can never fire:
# the capitalised keys ("Im", "Ive", "Id've", "I'dve") and the keys holding
# "'s" ("let's", "she's", "ow's'at", "'ow'sat"). "somebody'd" really does map
# to "somebodyd". Ordinary words that look like contractions ("its", "well",
# "ill", "shed", "were") are not in it.
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}


def _word_tokenize(text: str) -> str:
    return text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    # Every decision looks at the *input* text, not the partly processed one,
    # exactly as EvalAI does; a digit-comma-digit anywhere would switch every
    # character to deletion ("1,000" already became "1000" when tokenizing).
    has_digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for p in _VQA_PUNCTUATION:
        if p + " " in text or " " + p in text or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_MAX_PERIODS_STRIPPED)


def _process_digits_and_articles(text: str) -> str:
    # Numbers, then articles, then contractions, all on lower-cased words,
    # which is why the table's capitalised keys never match.
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(text: str) -> str:
    """EvalAI answer normalisation as MMF's and lmms-eval's ``EvalAIAnswerProcessor`` apply it
    to TextVQA: their word_tokenize step first (lowercase, delete "," and "?", "'s" -> " 's",
    strip), then newlines/tabs to spaces and strip, punctuation and periods, and finally
    number words, articles and contractions on the lower-cased words."""
    text = _word_tokenize(text)
    text = _clean_whitespace(text)
    text = _process_punctuation(text)
    return _process_digits_and_articles(text)


def _leave_one_out_accuracy(n_answers: int, n_matching: int) -> float:
    # An annotator whose own answer matches sees one fewer matching peer; the
    # others see all of them. Closed form of EvalAI's loop over annotators.
    matching_share = n_matching * min(1.0, (n_matching - 1) / 3)
    other_share = (n_answers - n_matching) * min(1.0, n_matching / 3)
    return (matching_share + other_share) / n_answers


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Standard VQA accuracy: mean over annotators of min(1, peers agreeing / 3).

    With a single reference there are no peers to leave out, so it is an exact
    match on the normalised strings.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    pred = normalize_vqa_answer(prediction)
    n_matching = sum(normalize_vqa_answer(a) == pred for a in answers)
    if len(answers) < 2:
        return float(n_matching)
    return _leave_one_out_accuracy(len(answers), n_matching)


_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _answer_letter(choices: Sequence[str], answer: int) -> str:
    if len(choices) > len(_LETTERS):
        raise ValueError(f"at most {len(_LETTERS)} choices are supported, got {len(choices)}")
    if not 0 <= answer < len(choices):
        raise ValueError(f"answer index {answer} out of range for {len(choices)} choices")
    return _LETTERS[answer]


def _is_strict_letter(pred: str, letter: str) -> bool:
    # A bare letter carries no other information, so its case is irrelevant;
    # "b." is refused because a lowercase letter before a period is more
    # likely the start of a sentence than an option label.
    return pred.upper() == letter if len(pred) == 1 else pred.startswith(letter + ".")


def option_match(prediction: str, choices: list[str], answer: int) -> bool:
    """True iff the prediction is the correct option letter ("b", "B") or
    starts with the capital letter and a period ("B.", "B. Texas")."""
    letter = _answer_letter(choices, answer)
    return _is_strict_letter(prediction.strip(), letter)


def _lenient_letter_pattern(letter: str) -> re.Pattern[str]:
    return re.compile(
        rf"(?:the answer is:?\s*)?(?:\({letter}\)|{letter}\)?)\.?",
        re.IGNORECASE,
    )


def _is_option_text(pred: str, option: str) -> bool:
    return pred.casefold() == option.strip().casefold()


def option_match_lenient(prediction: str, choices: list[str], answer: int) -> bool:
    """``option_match`` plus "(B)", "B)", "The answer is (B)." and the
    correct option's text itself (case-insensitive)."""
    letter = _answer_letter(choices, answer)
    pred = prediction.strip()
    return (
        _is_strict_letter(pred, letter)
        or _lenient_letter_pattern(letter).fullmatch(pred) is not None
        or _is_option_text(pred, choices[answer])
    )


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; unlike the normal
    approximation it stays inside [0, 1] and is sensible at 0/n and n/n."""
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def _resampled_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_resamples, len(values)))
    return values[idx].mean(axis=1)


def bootstrap_interval(
    values: list[float], n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean.

    For CIDEr pass ``CaptionScores.per_sample_cider`` values: their mean is the
    corpus score. The resamples keep the document frequencies of the full set
    rather than recomputing them per resample, so the interval reflects
    sampling of images, not of the IDF weights.
    """
    if len(values) == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    arr = np.asarray(values, dtype=float)
    if len(arr) == 1:
        return float(arr[0]), float(arr[0])
    means = _resampled_means(arr, n_resamples, seed)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(lo), float(hi)
