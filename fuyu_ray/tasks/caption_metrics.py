"""COCO-style captioning scores: CIDEr-D and BLEU-4 through pycocoevalcap, on captions tokenised
by the PTB tokenizer (java, as the COCO toolkit does) or its pure-Python equivalent where java is absent."""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

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
