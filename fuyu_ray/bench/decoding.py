"""Greedy generation with a static KV cache and compiled prefill and decode, in the style of gpt-fast.

This is what the `compile` preset runs instead of `model.generate`:

* Each decoder serves one shape: `max_batch` rows, prompts of `prompt_len` tokens, one image
  size. Shorter batches are padded up to it (filler rows, extra left padding), so every batch runs
  the same two graphs: one prefill (the prompt with its image patches) and one decode step (one
  token per row). Both are compiled with `torch.compile`: `mode="reduce-overhead"` (CUDA graphs)
  on CUDA, the default inductor mode on CPU, `fullgraph=True` where the model traces as one graph.
* The KV cache is a `transformers.StaticCache` allocated up front (not lazily inside the first,
  compiled, prefill: there it could not be marked as a static address and CUDA graphs would be
  skipped). In transformers 5.x the write position is the cache's own `cumulative_length`
  tensor, which each layer advances in place, so no step needs a Python-side position.
* CUDA-graph safety: the decode step's inputs are static buffers updated in place,
  `torch.compiler.cudagraph_mark_step_begin()` runs before each compiled call, and the ids that
  come out of a graph are cloned at once, so nothing written by one replay is read after the
  next replay overwrote it (stock `reduce-overhead` generate fails exactly there).
* Compile time is measured apart (`compile_s`: the wall time of the calls during which Dynamo
  compiled a graph), and so is the number of compilations beyond one per step (`recompiles`).
"""

from __future__ import annotations

import contextlib
import time
import types
from typing import Callable

import torch

from fuyu_ray.bench.models import PrefillMode, kv_cache_shape

# CUDA-graph trees run a new graph once, record it on the next call and replay from the third:
# a warm-up of three generates puts the recording of both graphs before any timed batch.
WARM_UP_RUNS = 3


def _compile_counter(group: str, name: str) -> int:
    """One of torch.compile's process-wide counters: graphs compiled, CUDA graphs skipped."""
    from torch._dynamo.utils import counters  # compile machinery, loaded only when counting compilations

    return int(counters[group][name])


def _graphs_compiled() -> int:
    return _compile_counter("stats", "unique_graphs")


def _cudagraph_skips() -> int:
    return _compile_counter("inductor", "cudagraph_skips")


def _own_code_copy(function):
    """The same function with a code object of its own.

    Dynamo keeps its compiled graphs, and counts towards its recompile limit, per code object.
    With a copy per decoder, each decoder has its own cache of graphs: a process that builds many
    decoders (one per benchmark shape) never reaches the limit and falls back to eager, and the
    graphs of a finished decoder go with it.
    """
    return types.FunctionType(
        function.__code__.replace(),
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )


def _prompt_embeddings(model, input_ids, image_patches):
    """The prompt's embeddings with the projected image patches at the image placeholders.

    What Fuyu's own forward does, less its check that counts the placeholders: that check reads
    a device value on the host, which would cut the compiled prefill's CUDA graph in two.
    """
    embeddings = model.get_input_embeddings()(input_ids)
    patches = model.model.vision_embed_tokens(image_patches).to(embeddings.dtype)
    placeholders = (input_ids == model.config.image_token_id).unsqueeze(-1)
    return embeddings.masked_scatter(placeholders, patches)


def _last_logits(model, cache, input_ids, position_ids, attention_mask, image_patches=None):
    """Tokens through the model, extending the static cache: the last position's logits [B, vocab].

    The prefill passes the prompt with its image patches; a decode step, one token per row.
    Each CompiledStep compiles its own copy, so the two never share (or evict) graphs.
    """
    if image_patches is None:
        tokens = {"input_ids": input_ids}
    else:
        tokens = {"inputs_embeds": _prompt_embeddings(model, input_ids, image_patches)}
    logits = model(
        **tokens,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
        return_dict=True,
    ).logits
    return logits[:, -1, :]


def _next_token(model, cache, input_ids, position_ids, attention_mask, image_patches=None):
    """The greedy next ids [B]: what a decode step needs, without the logits leaving its graph."""
    return _last_logits(model, cache, input_ids, position_ids, attention_mask, image_patches).argmax(dim=-1)


class CompiledStep:
    """One function of the decoder (prefill or decode step), compiled, with its own compile accounting."""

    def __init__(self, function, device: torch.device):
        self.function = _own_code_copy(function)
        self.is_cuda = device.type == "cuda"
        self.mode = "reduce-overhead" if self.is_cuda else "default"
        self.fullgraph = True
        self.compiled = self._compile(fullgraph=True)
        self.compile_s = 0.0  # wall time of the calls that compiled a graph
        self.compilations = 0  # calls that compiled at least one graph
        self.cudagraph_skips = 0  # times inductor declined CUDA graphs for this step's graphs
        self.calls = 0

    def _compile(self, fullgraph: bool):
        # Static shapes, always. Dynamo remembers which sizes changed between compilations of a function
        # by its source location, not its code object, so without this the second decoder of a process
        # would get graphs with symbolic sizes (slower kernels) although each decoder has one shape.
        return torch.compile(self.function, mode=self.mode, fullgraph=fullgraph, dynamic=False)

    def __call__(self, *args) -> torch.Tensor:
        """The step's output as a fresh tensor (never memory that a later CUDA-graph replay overwrites)."""
        before_graphs, before_skips = _graphs_compiled(), _cudagraph_skips()
        self.calls += 1
        started = time.perf_counter()
        try:
            output = self._call(*args)
        except torch._dynamo.exc.Unsupported:
            if not self.fullgraph:
                raise
            # The model does not trace as one graph here: compile with graph breaks instead of failing the cell.
            self.fullgraph = False
            self.compiled = self._compile(fullgraph=False)
            output = self._call(*args)
        if _graphs_compiled() > before_graphs:
            if self.is_cuda:
                torch.cuda.synchronize()
            self.compile_s += time.perf_counter() - started
            self.compilations += 1
        self.cudagraph_skips += _cudagraph_skips() - before_skips
        return output

    def _call(self, *args) -> torch.Tensor:
        if self.is_cuda:
            # A new CUDA-graph "iteration": outputs of earlier replays may be reused from here on,
            # which is safe because each one was cloned before this call.
            torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(*args).clone()


class StaticGreedyDecoder:
    """Greedy decoding for `transformers.FuyuForCausalLM` with fixed shapes, optionally compiled.

    Args:
        model: the model, already on `device` in its final dtype (the preset's fp16 is the caller's choice).
        max_batch: rows of every step; smaller batches are padded up to it, pad rows dropped from the output.
        prompt_len: tokens of every prefill; shorter prompts are left-padded up to it, longer ones refused.
        max_new_tokens: the most tokens one `generate` may produce; sizes the cache.
        compiled: compile the prefill and the decode step (with CUDA graphs on CUDA).
        device: "cuda", "cuda:N" or "cpu".
        prefill_mode: entered around each prefill (the preset's own way to prefill; see models.prefill_mode).
    """

    def __init__(
        self,
        model,
        max_batch: int,
        prompt_len: int,
        max_new_tokens: int,
        compiled: bool,
        device: str,
        prefill_mode: PrefillMode = PrefillMode(),
    ):
        if max_batch < 1 or prompt_len < 1 or max_new_tokens < 1:
            raise ValueError(
                f"need max_batch, prompt_len and max_new_tokens >= 1, got {max_batch}, {prompt_len}, {max_new_tokens}"
            )
        self.model = model
        self.max_batch, self.prompt_len, self.max_new_tokens = int(max_batch), int(prompt_len), int(max_new_tokens)
        self.max_cache_len = self.prompt_len + self.max_new_tokens - 1  # the last token is never fed back
        self.compiled = bool(compiled)
        self.prefill_mode = prefill_mode
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"

        config = model.config
        text_config = config.get_text_config(decoder=True)
        pad = getattr(config, "pad_token_id", None)
        if pad is None:
            pad = getattr(text_config, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0
        image_token_id = getattr(config, "image_token_id", None)
        # Left padding holds this token; it must not be an image placeholder, or it would ask for patches.
        self._padding_token_id = (
            self.pad_token_id
            if self.pad_token_id != image_token_id
            else int(getattr(text_config, "bos_token_id", 1) or 1)
        )

        # Made here once: a tensor made from a Python number per batch would be a copy from pageable
        # host memory, which waits for the queued prefill.
        self._pad_ids = torch.full((), self.pad_token_id, dtype=torch.long, device=self.device)

        from transformers import StaticCache  # slow to import: not in stand-in workers

        self.cache = StaticCache(config=config, max_cache_len=self.max_cache_len)
        _, kv_heads, head_dim = kv_cache_shape(config)
        # Inference mode, as every later write to the cache is.
        with torch.inference_mode():
            self.cache.early_initialization(
                self.max_batch, kv_heads, head_dim, next(model.parameters()).dtype, self.device
            )

        # The decode step's inputs: static buffers, updated in place between steps.
        self._tokens = torch.zeros((self.max_batch, 1), dtype=torch.long, device=self.device)
        self._positions = torch.zeros((self.max_batch, 1), dtype=torch.long, device=self.device)
        self._mask = torch.zeros((self.max_batch, self.max_cache_len), dtype=torch.long, device=self.device)
        if self.compiled:
            for buffer in (self._tokens, self._positions, self._mask):
                torch._dynamo.mark_static_address(buffer)
            self._prefill = CompiledStep(_last_logits, self.device)
            self._decode = CompiledStep(_next_token, self.device)
        else:
            self._prefill, self._decode = _last_logits, _next_token
        self.last_steps = 0  # tokens generated per row by the last `generate` (the longest row)
        self.last_prefill_logits: torch.Tensor | None = None  # [max_batch, vocab] of the last prefill
        self._slots_used = 0  # cache slots written since the last reset

    # ----------------------------------------------------------------------------------------- accounting

    @property
    def steps(self) -> tuple[CompiledStep, ...]:
        return (self._prefill, self._decode) if self.compiled else ()

    @property
    def compile_s(self) -> float:
        return sum(step.compile_s for step in self.steps)

    @property
    def compilations(self) -> int:
        return sum(step.compilations for step in self.steps)

    @property
    def recompiles(self) -> int:
        """Compilations beyond one per step (0 is the goal: one graph each for every batch)."""
        return sum(max(0, step.compilations - 1) for step in self.steps)

    @property
    def cudagraph_skips(self) -> int:
        return sum(step.cudagraph_skips for step in self.steps)

    def describe(self) -> str:
        shape = f"batch {self.max_batch} x prompt {self.prompt_len}"
        if self.prefill_mode.note:
            shape += f"; {self.prefill_mode.note}"
        if not self.compiled:
            return f"static cache, eager, {shape}"
        fullgraph = "/".join(str(step.fullgraph) for step in self.steps)
        skips = f", CUDA graphs skipped {self.cudagraph_skips}x" if self.cudagraph_skips else ""
        return (
            f"static cache + compiled prefill and decode ({self._decode.mode}, fullgraph={fullgraph}{skips}), {shape}"
        )

    # ----------------------------------------------------------------------------------------- steps

    def reset(self) -> None:
        """Rewind the cache and empty the step buffers for the next batch; nothing is reallocated.

        The cache's write positions go back to slot 0 in the same single foreach launch as the step
        buffers (not one launch per layer). The old keys and values stay: the prefill overwrites the
        prompt's slots and the mask hides the rest, so zeroing them (cache.reset(), about a
        gigabyte at batch 16) would only add memory traffic to every timed prefill.
        """
        self._slots_used = 0
        with torch.inference_mode():
            positions = self._cache_write_positions()
            if positions is None:  # a cache layout this code does not know: the public, slower way
                self.cache.reset()
                positions = []
            torch._foreach_zero_([*positions, self._tokens, self._positions, self._mask])

    def _cache_write_positions(self) -> list[torch.Tensor] | None:
        layers = getattr(self.cache, "layers", [])
        positions = [getattr(layer, "cumulative_length", None) for layer in layers]
        if layers and all(isinstance(position, torch.Tensor) for position in positions):
            return positions
        return None

    def decode_step(self) -> torch.Tensor:
        """One decode step from the static buffers: next token ids [B], a fresh tensor."""
        # Checked here, on the host: past the end, the cache write would be a device-side assert
        # that leaves the CUDA context unusable for every later cell.
        if self._slots_used >= self.max_cache_len:
            raise ValueError(f"all {self.max_cache_len} cache slots are written; reset() before decoding further")
        self._slots_used += 1
        with torch.inference_mode():
            return self._decode(self.model, self.cache, self._tokens, self._positions, self._mask)

    # ----------------------------------------------------------------------------------------- generate

    def warm_up(self, inputs: dict) -> tuple[float, float, int]:
        """Untimed full-length generates until both graphs are compiled and, on CUDA, recorded
        (CUDA-graph trees run a new graph once, record it on the next call and replay from the
        third); one for a decoder that is already warm. Returns (seconds of the first, seconds of
        all, how many)."""
        cold = self.compiled and any(step.calls < WARM_UP_RUNS for step in self.steps)
        seconds = []
        for _ in range(WARM_UP_RUNS if cold else 1):
            if self.is_cuda:
                torch.cuda.synchronize(self.device)
            started = time.perf_counter()
            self.generate(
                inputs, max_new_tokens=self.max_new_tokens, ignore_eos=True
            )  # every step, to compile decode too
            if self.is_cuda:
                torch.cuda.synchronize(self.device)
            seconds.append(time.perf_counter() - started)
        return seconds[0], sum(seconds), len(seconds)

    def generate(
        self,
        inputs: dict,
        max_new_tokens: int,
        eos_token_id: int | None = None,
        ignore_eos: bool = False,
        on_token: Callable[[], object] | None = None,
        prefill_timer: Callable[[], contextlib.AbstractContextManager] | None = None,
    ) -> torch.Tensor:
        """Greedy tokens for a FuyuProcessor batch: [B, T + generated], the prompt then the new tokens.

        Like `model.generate(do_sample=False)`: rows that produced `eos_token_id` continue with the pad
        token, and generation stops once every row has (never, with `ignore_eos`). `on_token()` is
        called once for every generated position, the prefill's token included; the prefill's
        forward runs inside `prefill_timer()` (e.g. `TokenClock.prefill`). The prefill's logits
        stay in `last_prefill_logits`.
        """
        with torch.inference_mode():
            return self._generate(inputs, max_new_tokens, eos_token_id, ignore_eos, on_token, prefill_timer)

    def _check(self, rows: int, length: int, max_new_tokens: int) -> None:
        if not 1 <= max_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"max_new_tokens must be in [1, {self.max_new_tokens}] for this decoder, got {max_new_tokens}"
            )
        if rows > self.max_batch:
            raise ValueError(f"batch of {rows} rows exceeds this decoder's max_batch={self.max_batch}")
        if length > self.prompt_len:
            raise ValueError(f"prompt of {length} tokens exceeds this decoder's prompt_len={self.prompt_len}")

    def _pad(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_patches: torch.Tensor | None):
        """The batch at the decoder's one shape: left padding up to prompt_len, filler rows up to max_batch.

        A filler row is a copy of the first row, image patches included, so that every prefill has
        the same number of patches too; its outputs are computed and dropped.
        """
        rows, length = input_ids.shape
        ids = torch.full(
            (self.max_batch, self.prompt_len), self._padding_token_id, dtype=input_ids.dtype, device=self.device
        )
        mask = torch.zeros((self.max_batch, self.prompt_len), dtype=attention_mask.dtype, device=self.device)
        ids[:rows, self.prompt_len - length :] = input_ids
        mask[:rows, self.prompt_len - length :] = attention_mask
        ids[rows:], mask[rows:] = ids[0], mask[0]
        if image_patches is not None:
            # [rows * patches, features] from FuyuProcessor, or [rows, patches, features]. Always a new
            # tensor made here, in inference mode: a caller's tensor would differ in dispatch keys from
            # a padded one, and that difference alone makes Dynamo recompile.
            first_row = (
                image_patches[:1] if image_patches.dim() == 3 else image_patches[: image_patches.shape[0] // rows]
            )
            image_patches = torch.cat(
                [image_patches, first_row.repeat(self.max_batch - rows, *[1] * (first_row.dim() - 1))]
            )
        return ids, mask, image_patches

    def _generate(self, inputs, max_new_tokens, eos_token_id, ignore_eos, on_token, prefill_timer=None) -> torch.Tensor:
        input_ids = inputs["input_ids"].to(self.device)
        rows, length = input_ids.shape
        attention_mask = inputs.get("attention_mask")
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device).long()
        self._check(rows, length, max_new_tokens)
        image_patches = inputs.get("image_patches")
        if image_patches is not None:
            image_patches = image_patches.to(self.device, dtype=next(self.model.parameters()).dtype)
        batch_ids, batch_mask, image_patches = self._pad(input_ids, attention_mask, image_patches)

        self.reset()
        # As `generate` does: positions count real tokens only, so left padding does not shift them.
        positions = batch_mask.cumsum(-1) - 1
        positions = positions.masked_fill(batch_mask == 0, 0)
        self._mask[:, : self.prompt_len].copy_(batch_mask)
        with prefill_timer() if prefill_timer is not None else contextlib.nullcontext(), self.prefill_mode.enter():
            self.last_prefill_logits = self._prefill(
                self.model, self.cache, batch_ids, positions, self._mask, image_patches
            )
        next_ids = self.last_prefill_logits.argmax(dim=-1)
        self._slots_used = self.prompt_len

        check_eos = eos_token_id is not None and not ignore_eos
        unfinished = torch.zeros(self.max_batch, dtype=torch.bool, device=self.device)
        unfinished[:rows] = True

        generated = []
        for step in range(max_new_tokens):
            if step > 0:
                # Feed the previous token: it goes to slot prompt_len + step - 1, which the mask now admits.
                self._mask[:, self.prompt_len + step - 1] = 1
                next_ids = self.decode_step()
            if check_eos:
                next_ids = torch.where(unfinished, next_ids, self._pad_ids)
                unfinished &= next_ids != eos_token_id
            generated.append(next_ids)
            if on_token is not None:
                on_token()
            if step == max_new_tokens - 1 or (check_eos and not bool(unfinished.any())):
                break
            # The next step's inputs, written in place into the static buffers.
            self._tokens[:, 0].copy_(next_ids)
            if step == 0:
                self._positions.copy_(positions[:, -1:] + 1)
            else:
                self._positions.add_(1)

        self.last_steps = len(generated)
        new_tokens = torch.stack(generated, dim=1)[:rows]
        return torch.cat([input_ids, new_tokens.to(input_ids.dtype)], dim=1)


def first_token_agreement(
    model, decoder: StaticGreedyDecoder, inputs: dict, context=contextlib.nullcontext
) -> dict[str, float]:
    """How closely the decoder's prefill agrees with stock `generate` on the same batch and weights.

    Compares the first generated position's logits: the share of rows whose top-1 token is the
    same, and the largest absolute logit difference over all rows and the vocabulary.
    """
    rows = inputs["input_ids"].shape[0]
    with context():
        decoder.generate(inputs, max_new_tokens=1, ignore_eos=True)
    ours = decoder.last_prefill_logits[:rows].float()
    with torch.inference_mode(), context():
        stock = (
            model.generate(
                **inputs,
                max_new_tokens=1,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=decoder.pad_token_id,
            )
            .logits[0]
            .float()
        )
    return {
        "first_token_top1_match": (stock.argmax(dim=-1) == ours.argmax(dim=-1)).float().mean().item(),
        "first_token_max_logit_diff": (stock - ours).abs().max().item(),
    }
