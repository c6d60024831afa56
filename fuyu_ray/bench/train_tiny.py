"""Trains the built-in tiny model on the synthetic training splits, once, seeded.

The point is proof, not quality: a model that learns through the same processor, prompts
and answer format as the benchmark shows that prompt building, answer extraction and the
metrics are right end to end. A broken link in that chain keeps its accuracy at chance.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

from fuyu_ray.bench import data, prompts, tiny
from fuyu_ray.bench.data import rows_to_samples
from fuyu_ray.bench.prompts import TaskSettings, build_prompt
from fuyu_ray.job.spec import TaskOverride
from fuyu_ray.tasks import base, tiny_training_tasks
from fuyu_ray.tasks.base import synthetic_rows
from fuyu_ray.tasks.synthetic import TRAIN_SPLIT

SEED = 0
STEPS = 1200
BATCH_SIZE = 16
LEARNING_RATE = 3e-4  # 2e-3 with clipping learned nothing when this was tried
IMAGE_SIDE = tiny.TRAINED_IMAGE_SIDE
PADDED_SIDE = 240  # the smallest multiple of Fuyu's 30 px patch that holds the image


def encode_examples(processor) -> list[dict[str, torch.Tensor]]:
    """Process every example once: the processor is the slow part, the model steps are cheap."""
    tokenizer = processor.tokenizer
    eos = tokenizer.convert_tokens_to_ids("|ENDOFTEXT|")
    examples = []
    for task in tiny_training_tasks():
        settings = TaskSettings.for_task(task.name, TaskOverride())
        samples, _ = rows_to_samples(task.name, synthetic_rows(task, task.tiny_examples, TRAIN_SPLIT))
        for sample in samples:
            prompt = build_prompt(settings, sample, 10_000, lambda text: 0)
            inputs = processor(
                images=[sample.image],
                text=[prompt.text],
                return_tensors="pt",
                size={"height": PADDED_SIDE, "width": PADDED_SIDE},
            )
            answer = tokenizer(task.scoring.training_answer(sample), add_special_tokens=False)["input_ids"] + [eos]
            prompt_ids = inputs["input_ids"][0]
            examples.append(
                {
                    "input_ids": torch.cat([prompt_ids, torch.tensor(answer)]),
                    "answer_from": torch.tensor(len(prompt_ids)),
                    "image_patches": inputs["image_patches"],
                }
            )
    return examples


def collate(batch: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad; only the answer tokens carry a loss."""
    length = max(len(e["input_ids"]) for e in batch)
    input_ids = torch.full((len(batch), length), pad_id)
    attention = torch.zeros((len(batch), length), dtype=torch.long)
    labels = torch.full((len(batch), length), -100)
    for row, example in enumerate(batch):
        ids = example["input_ids"]
        input_ids[row, : len(ids)] = ids
        attention[row, : len(ids)] = 1
        labels[row, example["answer_from"] : len(ids)] = ids[example["answer_from"] :]
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "labels": labels,
        "image_patches": torch.cat([e["image_patches"] for e in batch]),
    }


def train(log=print):
    random.seed(SEED)
    torch.manual_seed(SEED)
    processor = tiny.build_processor(tiny.build_tokenizer())
    started = time.perf_counter()
    examples = encode_examples(processor)
    log(f"tiny: {len(examples)} training examples encoded in {time.perf_counter() - started:.1f}s")

    from transformers import FuyuForCausalLM  # slow to import: not in stand-in workers

    model = FuyuForCausalLM(tiny.build_config(processor.tokenizer))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    order = random.Random(SEED)
    pad_id = processor.tokenizer.pad_token_id
    for step in range(STEPS):
        batch = collate(order.sample(examples, BATCH_SIZE), pad_id)
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == STEPS - 1:
            log(f"tiny: step {step} loss {loss.item():.3f} ({time.perf_counter() - started:.0f}s)")
    model.eval()
    return model, processor


def cache_root() -> Path:
    base = os.environ.get("FUYU_RAY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "fuyu_ray"
    )
    return Path(base)


def code_fingerprint() -> str:
    """The cache key: the source of everything that defines the tiny model and its training."""
    # Every task module, not only the trained tasks': a task's rows, prompt and reader may live in a
    # shared module (tasks/base.py), and the registry fixes which tasks are learnt, in what order.
    files = [Path(module.__file__) for module in (tiny, data, prompts, sys.modules[__name__])]
    files += sorted(Path(base.__file__).parent.glob("*.py"))
    digest = hashlib.sha256()
    # A checkpoint saved by a newer transformers may not load in an older one: each version trains its own.
    digest.update(metadata.version("transformers").encode())
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def checkpoint_dir() -> Path:
    return cache_root() / f"tiny-{code_fingerprint()}"


def ensure_checkpoint() -> Path:
    """The trained tiny model directory, trained and saved atomically on first use."""
    target = checkpoint_dir()
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Workers that start together on one node train once: the others wait for the lock.
    with open(target.parent / ".train.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            _train_into(target)
    return target


def _train_into(target: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        model, processor = train()
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
