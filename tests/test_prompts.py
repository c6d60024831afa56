"""Prompts capped to seq_len: the context goes first, from its start, then the start of the question;
the template and the options are never cut."""

from __future__ import annotations

import pytest
from PIL import Image

from fuyu_ray.bench import tiny
from fuyu_ray.bench.data import Sample
from fuyu_ray.bench.prompts import TaskSettings, build_prompt, render
from fuyu_ray.job.spec import TaskOverride
from fuyu_ray.tasks import get_task
from fuyu_ray.tasks.base import option_lines

CONTEXT = "c1 c2 c3 c4 c5"
QUESTION = "q1 q2 q3 which colour is the shape?"
CHOICES = ("red", "green", "blue")
SCIENCEQA = TaskSettings.for_task("scienceqa", TaskOverride())
TAIL = "\n" + option_lines(CHOICES) + "\nAnswer with the option's letter from the given choices directly.\n"


def words(text: str) -> int:
    """A token counter whose counts are easy to follow: one token per word."""
    return len(text.split())


def sample(hint: str = CONTEXT, question: str = QUESTION) -> Sample:
    return Sample("s1", Image.new("RGB", (8, 8)), question=question, hint=hint, choices=CHOICES, answer_index=2)


def rendered(context: list[str], question: list[str]) -> str:
    return render(SCIENCEQA, sample(), context, question)


FULL = rendered(CONTEXT.split(), QUESTION.split())
BARE = rendered([], [])  # template and options alone: never cut


def kept(prompt_text: str) -> tuple[list[str], list[str]]:
    """The context and question words a capped prompt kept."""
    assert prompt_text.endswith(TAIL), prompt_text
    body = prompt_text[: -len(TAIL)]
    if body.startswith("Context: "):
        context, question = body[len("Context: ") :].split("\n", 1)
        return context.split(), question.split()
    return [], body.split()


def test_a_prompt_within_the_cap_is_untouched():
    prompt = build_prompt(SCIENCEQA, sample(), words(FULL), words)
    assert prompt.text == FULL and not prompt.truncated and prompt.text_tokens == words(FULL)
    assert FULL == "Context: " + CONTEXT + "\n" + QUESTION + TAIL


def test_the_context_loses_its_start_first():
    prompt = build_prompt(SCIENCEQA, sample(), words(FULL) - 2, words)
    assert prompt.truncated
    assert kept(prompt.text) == (["c3", "c4", "c5"], QUESTION.split())
    assert prompt.text_tokens == words(prompt.text) == words(FULL) - 2


def test_then_the_question_loses_its_start():
    no_context = rendered([], QUESTION.split())
    prompt = build_prompt(SCIENCEQA, sample(), words(no_context) - 3, words)
    assert prompt.truncated
    assert kept(prompt.text) == ([], QUESTION.split()[3:])  # "which colour is the shape?": what is asked stays
    assert "Context:" not in prompt.text  # an emptied context leaves no empty label behind


def test_every_cap_keeps_a_context_suffix_before_it_touches_the_question():
    context, question = CONTEXT.split(), QUESTION.split()
    for seq_len in range(words(FULL), words(BARE) - 1, -1):
        prompt = build_prompt(SCIENCEQA, sample(), seq_len, words)
        kept_context, kept_question = kept(prompt.text)
        assert prompt.text_tokens == words(prompt.text) <= seq_len, seq_len
        assert kept_context == context[len(context) - len(kept_context) :], seq_len  # a suffix: cut from the start
        assert kept_question == question[len(question) - len(kept_question) :], seq_len
        if kept_question != question:
            assert kept_context == [], seq_len  # the question is cut only once the context is gone
        # Nothing more than needed was cut: one more word back would break the cap.
        if kept_context != context or kept_question != question:
            if kept_question == question:
                back = rendered(context[len(context) - len(kept_context) - 1 :], question)
            else:
                back = rendered([], question[len(question) - len(kept_question) - 1 :])
            assert words(back) > seq_len, seq_len


def test_the_template_and_options_are_never_cut_even_past_the_cap():
    prompt = build_prompt(SCIENCEQA, sample(), 1, words)
    assert prompt.truncated
    assert prompt.text == BARE == TAIL
    assert prompt.text.endswith(TAIL) and option_lines(CHOICES) in prompt.text
    assert prompt.text_tokens == words(BARE) > 1  # over the cap: the task's own words stay


def test_a_custom_template_keeps_its_own_words():
    settings = TaskSettings.for_task("scienceqa", TaskOverride(template="Q: {question} ({options}) Say the letter."))
    bare = words(render(settings, sample(), [], []))
    prompt = build_prompt(settings, sample(hint=""), bare + 2, words)
    assert prompt.truncated
    assert prompt.text == f"Q: the shape? ({option_lines(CHOICES)}) Say the letter.\n"


@pytest.fixture(scope="module")
def count_tokens():
    tokenizer = tiny.build_tokenizer()
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_with_the_real_tokenizer_the_cap_holds_and_the_order_is_the_same(count_tokens):
    full = count_tokens(FULL)
    bare = count_tokens(BARE)
    assert full > bare
    for seq_len in (full, (full + bare) // 2, bare + 2, bare):
        prompt = build_prompt(SCIENCEQA, sample(), seq_len, count_tokens)
        assert prompt.text_tokens == count_tokens(prompt.text) <= seq_len
        kept_context, kept_question = kept(prompt.text)
        assert kept_context == CONTEXT.split()[5 - len(kept_context) :]
        assert kept_question == QUESTION.split()[len(QUESTION.split()) - len(kept_question) :]
        assert kept_question == QUESTION.split() or kept_context == []
        assert prompt.truncated == (seq_len < full)


def test_textvqa_and_coco_templates_are_the_defaults():
    textvqa = build_prompt(
        TaskSettings.for_task("textvqa", TaskOverride()), sample(hint="", question="what word is it?"), 200, words
    )
    assert textvqa.text == "What word is it?\nAnswer the question using a single word or phrase.\n"
    coco = build_prompt(TaskSettings.for_task("coco", TaskOverride()), sample(hint="", question="ignored"), 200, words)
    assert coco.text == get_task("coco").template + "\n" and not coco.truncated
