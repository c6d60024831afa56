"""The built-in `tiny` model: the real FuyuForCausalLM class, small, with a locally built tokenizer.

It is saved as an ordinary model directory, so it loads through exactly the
`from_pretrained` path that a hub id or a user's local directory takes.
"""

from __future__ import annotations

import json

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers import models as token_models

from fuyu_ray.tasks import tiny_training_tasks
from fuyu_ray.tasks.base import synthetic_rows
from fuyu_ray.tasks.synthetic import BACKGROUNDS, COLORS, SHAPES, WORDS

SPECIAL_TOKENS = ("<pad>", "<s>", "|ENDOFTEXT|")
# Fuyu's image placeholders are ordinary vocabulary pieces built by merges, not added tokens:
# that is what makes its tokenizer emit the leading "▁" piece that FuyuProcessor strips.
IMAGE_PIECES = ("|SPEAKER|", "|NEWLINE|")
BEGINNING_OF_ANSWER = "<0x04>"
TINY_SHAPE = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY_LABEL = "tiny (built-in, trained on synthetic data)"
TINY_UNTRAINED_LABEL = "tiny (built-in, untrained)"
TRAINED_IMAGE_SIDE = 224  # every training image is this size: tiny's figures at other sizes show only that


def trained_tasks_text() -> str:
    """What tiny learnt from, as a report states it beside tiny's figures."""
    return ", ".join(f"{task.tiny_examples} {task.title} examples" for task in tiny_training_tasks())


def tokenizer_corpus() -> list[str]:
    tasks = tiny_training_tasks()
    texts = [*WORDS, *COLORS, *SHAPES, *BACKGROUNDS, *(task.template for task in tasks)]
    for task in tasks:
        for index, row in enumerate(synthetic_rows(task, 40, split="tokenizer")):
            sample = task.to_sample(row, index)
            texts.append(task.render(task.template, sample, sample.hint.split(), sample.question.split()))
            texts.extend(sample.references)
    return texts


def build_tokenizer():
    """A byte-fallback BPE with Fuyu's normaliser (prepend and replace "▁") and Fuyu's special pieces."""
    normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    learner = Tokenizer(token_models.BPE())
    learner.normalizer = normalizer
    # Learn merges within words only, as sentencepiece does, so token counts stay word-like.
    learner.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    learner.train_from_iterator(tokenizer_corpus(), trainers.BpeTrainer(vocab_size=400, show_progress=False))
    learned = json.loads(learner.to_str())["model"]

    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []
    for token in (*SPECIAL_TOKENS, *(f"<0x{b:02X}>" for b in range(256))):
        vocab.setdefault(token, len(vocab))
    for piece in IMAGE_PIECES:  # first in rank, so a placeholder is always one piece
        merges.extend(_merge_chain(piece, vocab))
    for token in learned["vocab"]:
        vocab.setdefault(token, len(vocab))
    merges.extend(tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned["merges"])

    tokenizer = Tokenizer(token_models.BPE(vocab=vocab, merges=merges, byte_fallback=True))
    tokenizer.normalizer = normalizer
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in (*SPECIAL_TOKENS, BEGINNING_OF_ANSWER)]
    )
    from transformers import PreTrainedTokenizerFast  # slow to import: not in stand-in workers

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="|ENDOFTEXT|", pad_token="<pad>"
    )


def _merge_chain(piece: str, vocab: dict[str, int]) -> list[tuple[str, str]]:
    for char in piece:
        vocab.setdefault(char, len(vocab))
    chain, built = [], piece[0]
    for char in piece[1:]:
        chain.append((built, char))
        built += char
        vocab.setdefault(built, len(vocab))
    return chain


def build_config(tokenizer):
    from transformers import FuyuConfig  # slow to import: not in stand-in workers

    vocab = tokenizer.get_vocab()
    return FuyuConfig(
        vocab_size=len(vocab),
        max_position_embeddings=2048,
        image_token_id=vocab["|SPEAKER|"],
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["|ENDOFTEXT|"],
        **TINY_SHAPE,
    )


def build_processor(tokenizer):
    from transformers import FuyuProcessor  # slow to import: not in stand-in workers
    from transformers.models.fuyu.image_processing_pil_fuyu import FuyuImageProcessorPil

    from fuyu_ray.bench.processor_compat import adapt  # torch, with the processor

    return adapt(FuyuProcessor(image_processor=FuyuImageProcessorPil(), tokenizer=tokenizer))
