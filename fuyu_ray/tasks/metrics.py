"""Accuracy metrics for the benchmark tasks: TextVQA/VQAv2 accuracy, ScienceQA
option matching, COCO-style captioning scores, and confidence intervals.

Pure Python + numpy (+ pycocoevalcap for captioning) so that scoring can run on
a driver or a laptop without torch, Ray or a GPU.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CaptionScores",
    "bootstrap_interval",
    "caption_scores",
    "cider",
    "normalize_vqa_answer",
    "option_match",
    "option_match_lenient",
    "vqa_accuracy",
    "wilson_interval",
]


# ---------------------------------------------------------------------------
# VQA accuracy (EvalAI normalisation, as used for TextVQA by MMF and lmms-eval)
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# Multiple choice (ScienceQA, AI2D): the option letter
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# Captioning: CIDEr-D and BLEU-4 via pycocoevalcap
# ---------------------------------------------------------------------------

TOO_FEW_IMAGES = "CIDEr needs at least 2 images: document frequencies come from the scored set"

# The exact token list pycocoevalcap's PTBTokenizer drops. Because it runs
# Stanford's tokenizer with -lowerCase, bracket tokens come out as "-lrb-"
# etc. and, not matching the upper-case entries here, are *kept*; the Python
# tokenizer reproduces that quirk so both give the same scores.
_PTB_DROPPED = frozenset(
    [
        "''",
        "'",
        "``",
        "`",
        "-LRB-",
        "-RRB-",
        "-LCB-",
        "-RCB-",
        ".",
        "?",
        "!",
        ",",
        ":",
        "-",
        "--",
        "...",
        ";",
    ]
)

_PTB_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}

_UNICODE_PUNCT = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
    "\u2026": " ... ",
    "\u2014": " -- ",
    "\u2013": " -- ",
}

# Abbreviations Stanford's tokenizer keeps whole; without this "dr. who"
# would lose its period in Python but not in Java.
_ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "st",
        "jr",
        "sr",
        "prof",
        "etc",
        "vs",
        "no",
        "inc",
        "ltd",
        "co",
        "corp",
        "mt",
        "ave",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "gen",
        "gov",
        "sen",
        "rep",
        "lt",
        "col",
        "sgt",
        "capt",
        "rev",
        "fig",
    }
)

_CLITICS = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m")

_WHOLE_WORD_SPLITS = {
    "cannot": ["can", "not"],
    "gonna": ["gon", "na"],
    "wanna": ["wan", "na"],
    "gotta": ["got", "ta"],
    "gimme": ["gim", "me"],
    "lemme": ["lem", "me"],
    "'tis": ["'t", "is"],
    "'twas": ["'t", "was"],
}

# Order matters: "..." must be isolated before single periods are judged, and
# "--" before lone hyphens.
_PTB_SUBSTITUTIONS = (
    (re.compile(r"\.{2,}"), " ... "),
    (re.compile(r"-{2,}"), " -- "),
    (re.compile(r"[?!]+"), r" \g<0> "),
    (re.compile(r"(?<!\d)[,:]|[,:](?!\d)"), " "),
    (re.compile(r'[;"`]'), " "),
    (re.compile(r"[$%*]"), r" \g<0> "),
    (re.compile(r"#(?=\d)"), " # "),
    (re.compile(r"(?<=\w)'n'(?=\w)"), " 'n' "),
)


def _ptb_split_characters(text: str) -> str:
    for char, replacement in _UNICODE_PUNCT.items():
        text = text.replace(char, replacement)
    for char, tag in _PTB_BRACKETS.items():
        text = text.replace(char, f" {tag} ")
    for pattern, replacement in _PTB_SUBSTITUTIONS:
        text = pattern.sub(replacement, text)
    return text


_KEPT_WHOLE = frozenset(_CLITICS) | frozenset(_WHOLE_WORD_SPLITS) | frozenset(_PTB_BRACKETS.values()) | {"'n'"}


def _strip_quotes_and_hyphens(token: str) -> str:
    # Quotes at a token's edge are quotation marks (or a plural possessive,
    # which PTB also splits off and drops); a year like "'90s" is not.
    if token in _KEPT_WHOLE or re.match(r"'\d", token):
        return token
    token = token.strip("'")
    if re.match(r"-[^\d-]", token):
        token = token[1:]
    if token.strip("-") and token.endswith("-"):
        token = token.rstrip("-")
    return token


def _split_final_period(token: str) -> list[str]:
    body = token[:-1]
    keeps_period = (
        not token.endswith(".")
        or not body
        or "." in body
        or (len(body) == 1 and body.isalpha())
        or body in _ABBREVIATIONS
    )
    return [token] if keeps_period else [body, "."]


def _split_clitic(token: str) -> list[str]:
    if token in _WHOLE_WORD_SPLITS:
        return _WHOLE_WORD_SPLITS[token]
    for clitic in _CLITICS:
        if token.endswith(clitic) and len(token) > len(clitic):
            return [token[: -len(clitic)], clitic]
    return [token]


def _ptb_tokens(token: str) -> list[str]:
    out: list[str] = []
    for piece in _split_final_period(_strip_quotes_and_hyphens(token)):
        out.extend(_split_clitic(_strip_quotes_and_hyphens(piece)))
    return out


def python_ptb_tokenize(caption: str) -> str:
    """Approximates pycocoevalcap's Java PTBTokenizer (lower-case, split
    punctuation and clitics, drop punctuation tokens) for machines without
    Java. Agrees with it on ordinary captions; exotic inputs such as emoticons
    may differ."""
    text = _ptb_split_characters(caption.lower())
    tokens = [t for raw in text.split() for t in _ptb_tokens(raw)]
    return " ".join(t for t in tokens if t and t not in _PTB_DROPPED)


@dataclass(frozen=True)
class CaptionScores:
    cider: float | None
    bleu4: float | None
    # Per-image CIDEr-D; their mean is the corpus score, which is what makes
    # a bootstrap over them meaningful (see bootstrap_interval).
    per_sample_cider: dict
    tokenizer: str
    note: str | None = None


def _resolve_tokenizer(tokenizer: str) -> str:
    if tokenizer == "auto":
        return "ptb-java" if shutil.which("java") else "python"
    if tokenizer == "ptb-java" and not shutil.which("java"):
        raise RuntimeError("tokenizer='ptb-java' needs `java` on PATH")
    if tokenizer not in ("ptb-java", "python"):
        raise ValueError(f"tokenizer must be 'auto', 'python' or 'ptb-java', got {tokenizer!r}")
    return tokenizer


def _check_caption_inputs(predictions: Mapping, references: Mapping) -> None:
    if predictions.keys() != references.keys():
        missing = set(references) ^ set(predictions)
        raise ValueError(f"predictions and references cover different ids: {sorted(map(str, missing))[:10]}")
    for key, refs in references.items():
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{key!r}] must be a non-empty list of strings")


def _tokenize_java(predictions: Mapping, references: Mapping) -> tuple[dict, dict]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # optional on a bare GPU box: only captions need it

    # One combined call because each call starts a JVM.
    batch = {("pred", k): [{"caption": v}] for k, v in predictions.items()}
    batch.update({("ref", k): [{"caption": r} for r in refs] for k, refs in references.items()})
    out = PTBTokenizer().tokenize(batch)
    res = {k: out[("pred", k)] for k in predictions}
    gts = {k: out[("ref", k)] for k in predictions}
    return gts, res


def _tokenize_python(predictions: Mapping, references: Mapping) -> tuple[dict, dict]:
    res = {k: [python_ptb_tokenize(v)] for k, v in predictions.items()}
    gts = {k: [python_ptb_tokenize(r) for r in references[k]] for k in predictions}
    return gts, res


def _bleu4(gts: dict, res: dict) -> float:
    from pycocoevalcap.bleu.bleu import Bleu  # optional on a bare GPU box: only captions need it

    # The default verbose=1 prints corpus n-gram counts to stdout.
    scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return float(scores[3])


def _cider_d(gts: dict, res: dict) -> tuple[float, dict]:
    from pycocoevalcap.cider.cider import Cider  # optional on a bare GPU box: only captions need it

    score, per_image = Cider().compute_score(gts, res)
    # Cider iterates gts.keys(), so the per-image array follows that order.
    return float(score), {k: float(s) for k, s in zip(gts, per_image)}


def caption_scores(predictions: dict, references: dict, *, tokenizer: str = "auto") -> CaptionScores:
    """CIDEr-D and BLEU-4 exactly as pycocoevalcap computes them, after PTB
    tokenisation (Java when available, else the Python approximation)."""
    _check_caption_inputs(predictions, references)
    name = _resolve_tokenizer(tokenizer)
    if len(predictions) < 2:
        # With one image every reference n-gram has document frequency 1 =
        # corpus size, so every IDF weight is log(1) = 0 and CIDEr is 0.
        return CaptionScores(cider=None, bleu4=None, per_sample_cider={}, tokenizer=name, note=TOO_FEW_IMAGES)
    tokenize = _tokenize_java if name == "ptb-java" else _tokenize_python
    gts, res = tokenize(predictions, references)
    corpus, per_image = _cider_d(gts, res)
    return CaptionScores(cider=corpus, bleu4=_bleu4(gts, res), per_sample_cider=per_image, tokenizer=name)


def cider(predictions: dict, references: dict, *, tokenizer: str = "auto") -> float:
    """Corpus CIDEr-D; raises ValueError for fewer than 2 images."""
    if len(predictions) < 2:
        raise ValueError(TOO_FEW_IMAGES)
    score = caption_scores(predictions, references, tokenizer=tokenizer).cider
    assert score is not None
    return score


# ---------------------------------------------------------------------------
# Confidence intervals
# ---------------------------------------------------------------------------


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
