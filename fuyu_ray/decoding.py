"""Greedy generation with a static KV cache and a compiled decode step, in the style of gpt-fast.

This is what the `compile` preset runs instead of `model.generate`:

* The prompt (with its image patches) goes through the ordinary, uncompiled forward once,
  writing into a `transformers.StaticCache` that was sized once for (max_batch, max_cache_len).
* Every later token comes from `decode_step`: one token per row, through the same forward,
  compiled with `torch.compile` (`mode="reduce-overhead"`, i.e. CUDA graphs, on CUDA; the
  default inductor mode on CPU), `fullgraph=True` where the model traces as one graph.
* The decode step has one shape for every step of every batch: batches are padded up to
  `max_batch` rows, the attention mask always spans `max_cache_len` slots, and the write
  position comes from the cache's own position *tensor* (in transformers 5.x `cache_position`
  is no longer an argument: each `StaticLayer` keeps a `cumulative_length` tensor, marked as a
  static address, that it advances in place). So one compiled graph serves every decode step.
* CUDA-graph safety: the decode step's inputs are static buffers (allocated once, marked as
  static addresses and only ever updated in place), `torch.compiler.cudagraph_mark_step_begin()`
  runs before each compiled call, and the next-token ids that come out of the graph are cloned
  at once, so nothing written by one replay is read after the next replay overwrote it.
* Compile time is measured apart (`compile_s`: the wall time of the decode calls during which
  Dynamo compiled a graph), and so is the number of compilations after the first (`recompiles`).
"""

from __future__ import annotations

import time
import types
from typing import Callable

import torch


def round_up(value: int, multiple: int) -> int:
    """`value` rounded up to a multiple of `multiple`: a bucket for a shape that must not vary."""
    return -(-int(value) // int(multiple)) * int(multiple)


def _graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _cudagraph_skips() -> int:
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def _own_code_copy(function):
    """The same function with a code object of its own.

    Dynamo keeps its compiled graphs, and counts towards its recompile limit, per code object.
    With a copy per decoder, each decoder has its own cache of graphs: a process that builds many
    decoders (one per benchmark cell) never reaches the limit and falls back to eager, and
    graphs of a finished decoder go with it.
    """
    return types.FunctionType(
        function.__code__.replace(), function.__globals__, function.__name__, function.__defaults__, function.__closure__
    )


def _decode_forward(model, cache, input_ids, position_ids, attention_mask):
    """One token per row through the model, reading and extending the static cache: argmax ids [B]."""
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        return_dict=True,
    ).logits
    return logits[:, -1, :].argmax(dim=-1)


class StaticGreedyDecoder:
    """Greedy decoding for `transformers.FuyuForCausalLM` with fixed shapes and an optionally compiled decode step.

    Args:
        model: the model, already on `device` in its final dtype (the preset's fp16 is the caller's choice).
        max_batch: rows of every decode step; smaller batches are padded up to it, pad rows dropped from the output.
        max_cache_len: slots in the static cache; a batch needs prompt length + max_new_tokens - 1 of them.
        compile_decode: compile the decode step (CUDA graphs on CUDA).
        device: "cuda", "cuda:N" or "cpu".
    """

    def __init__(self, model, max_batch: int, max_cache_len: int, compile_decode: bool, device: str):
        from transformers import StaticCache

        if max_batch < 1 or max_cache_len < 2:
            raise ValueError(f"need max_batch >= 1 and max_cache_len >= 2, got {max_batch} and {max_cache_len}")
        self.model = model
        self.max_batch = int(max_batch)
        self.max_cache_len = int(max_cache_len)
        self.compile_decode = bool(compile_decode)
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"

        config = model.config
        text_config = config.get_text_config(decoder=True)
        pad = getattr(config, "pad_token_id", None)
        if pad is None:
            pad = getattr(text_config, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0
        image_token_id = getattr(config, "image_token_id", None)
        # Filler rows hold only this token; it must not be an image placeholder, or they would ask for patches.
        self._filler_token_id = self.pad_token_id if self.pad_token_id != image_token_id else int(getattr(text_config, "bos_token_id", 1) or 1)

        # One cache for the decoder's life; its tensors are allocated on the first prefill (dtype and
        # device come from the model's keys), then only ever zeroed and written in place.
        self.cache = StaticCache(config=config, max_cache_len=self.max_cache_len)

        # The decode step's inputs: static buffers, updated in place between steps.
        self._tokens = torch.zeros((self.max_batch, 1), dtype=torch.long, device=self.device)
        self._positions = torch.zeros((self.max_batch, 1), dtype=torch.long, device=self.device)
        self._mask = torch.zeros((self.max_batch, self.max_cache_len), dtype=torch.long, device=self.device)
        if self.compile_decode:
            for buffer in (self._tokens, self._positions, self._mask):
                torch._dynamo.mark_static_address(buffer)

        self.fullgraph: bool | None = None
        self.compile_mode: str | None = None
        self._forward = _own_code_copy(_decode_forward) if self.compile_decode else _decode_forward
        self._step = self._build_step(fullgraph=True) if self.compile_decode else self._forward

        self.compile_s = 0.0  # wall time of the decode calls that compiled a graph
        self.compilations = 0  # decode calls that compiled at least one graph
        self.cudagraph_skips = 0  # times inductor declined CUDA graphs for this decoder's graphs
        self.last_steps = 0  # tokens generated per row by the last `generate` (the longest row)

    # ----------------------------------------------------------------------------------------- compile

    def _build_step(self, fullgraph: bool):
        self.fullgraph = fullgraph
        self.compile_mode = "reduce-overhead" if self.is_cuda else "default"
        return torch.compile(self._forward, mode=self.compile_mode, fullgraph=fullgraph)

    @property
    def recompiles(self) -> int:
        """Compilations of the decode step after the first one (0 is the goal: one graph for everything)."""
        return max(0, self.compilations - 1)

    # ----------------------------------------------------------------------------------------- steps

    def reset(self) -> None:
        """Empty the cache and the step buffers for the next batch; nothing is reallocated."""
        # The cache's tensors are created inside inference mode (on the first prefill), so they
        # can only be written inside it: every entry point here runs under it.
        with torch.inference_mode():
            self.cache.reset()
            self._tokens.zero_()
            self._positions.zero_()
            self._mask.zero_()

    def decode_step(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One decode step: next token ids [B] for `input_ids` [B, 1] at `position_ids` [B, 1].

        `attention_mask` is [B, max_cache_len], 1 for every cache slot that is a real token,
        including the slot this step writes; the slot itself is the cache's position tensor.
        Returns a fresh tensor (never memory that a later CUDA-graph replay overwrites).
        """
        with torch.inference_mode():
            return self._decode_step(input_ids, position_ids, attention_mask)

    def _decode_step(self, input_ids, position_ids, attention_mask) -> torch.Tensor:
        if not self.compile_decode:
            return self._step(self.model, self.cache, input_ids, position_ids, attention_mask)
        before_graphs, before_skips = _graphs_compiled(), _cudagraph_skips()
        started = time.perf_counter()
        try:
            next_ids = self._compiled_call(input_ids, position_ids, attention_mask)
        except torch._dynamo.exc.Unsupported:
            if not self.fullgraph:
                raise
            # The model does not trace as one graph here: compile with graph breaks instead of failing the cell.
            self._step = self._build_step(fullgraph=False)
            next_ids = self._compiled_call(input_ids, position_ids, attention_mask)
        if _graphs_compiled() > before_graphs:
            if self.is_cuda:
                torch.cuda.synchronize(self.device)
            self.compile_s += time.perf_counter() - started
            self.compilations += 1
        self.cudagraph_skips += _cudagraph_skips() - before_skips
        return next_ids

    def _compiled_call(self, input_ids, position_ids, attention_mask) -> torch.Tensor:
        if self.is_cuda:
            # A new CUDA-graph "iteration": outputs of earlier replays may be reused from here on,
            # which is safe because each one was cloned before this call.
            torch.compiler.cudagraph_mark_step_begin()
        return self._step(self.model, self.cache, input_ids, position_ids, attention_mask).clone()

    # ----------------------------------------------------------------------------------------- generate

    def warm_up(self, inputs: dict, max_new_tokens: int) -> float:
        """One full, untimed generate that compiles (and on CUDA records the graph); returns its seconds."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        # At least three decode steps: CUDA-graph trees run a new graph once, record it on the next
        # call and replay from the third, so the recording happens here and not in a timed batch.
        room = self.max_cache_len - inputs["input_ids"].shape[1] + 1
        self.generate(inputs, max_new_tokens=max(1, min(max(4, max_new_tokens), room)), ignore_eos=True)
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started

    def generate(
        self,
        inputs: dict,
        max_new_tokens: int,
        eos_token_id: int | None = None,
        ignore_eos: bool = False,
        on_token: Callable[[], object] | None = None,
    ) -> torch.Tensor:
        """Greedy tokens for a FuyuProcessor batch: [B, T + generated], the prompt then the new tokens.

        Like `model.generate(do_sample=False)`: rows that produced `eos_token_id` continue with the pad
        token, and generation stops once every row has (never, with `ignore_eos`). `on_token()` is
        called once for every generated position, the prefill's token included.
        """
        with torch.inference_mode():
            return self._generate(inputs, max_new_tokens, eos_token_id, ignore_eos, on_token)

    def _generate(self, inputs, max_new_tokens, eos_token_id, ignore_eos, on_token) -> torch.Tensor:
        input_ids = inputs["input_ids"].to(self.device)
        rows, length = input_ids.shape
        attention_mask = inputs.get("attention_mask")
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device).long()
        image_patches = inputs.get("image_patches")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if rows > self.max_batch:
            raise ValueError(f"batch of {rows} rows exceeds this decoder's max_batch={self.max_batch}")
        if length + max_new_tokens - 1 > self.max_cache_len:
            raise ValueError(
                f"prompt of {length} tokens + {max_new_tokens} new tokens needs {length + max_new_tokens - 1} cache slots, "
                f"more than max_cache_len={self.max_cache_len}"
            )

        # Pad the batch to max_batch rows. A filler row is one real token (no image placeholder, so it
        # needs no patches) behind left padding; its outputs are computed and dropped.
        if rows < self.max_batch:
            filler = self.max_batch - rows
            filler_ids = torch.full((filler, length), self._filler_token_id, dtype=input_ids.dtype, device=self.device)
            filler_mask = torch.zeros((filler, length), dtype=attention_mask.dtype, device=self.device)
            filler_mask[:, -1] = 1
            batch_ids = torch.cat([input_ids, filler_ids])
            batch_mask = torch.cat([attention_mask, filler_mask])
        else:
            batch_ids, batch_mask = input_ids, attention_mask

        self.reset()
        # As `generate` does: positions count real tokens only, so left padding does not shift them.
        positions = batch_mask.cumsum(-1) - 1
        positions = positions.masked_fill(batch_mask == 0, 0)
        self._mask[:, :length].copy_(batch_mask)

        # Prefill: the ordinary forward (image patches included), writing slots [0, T) of the cache.
        prefill_inputs = {
            "input_ids": batch_ids,
            "attention_mask": self._mask,
            "position_ids": positions,
            "past_key_values": self.cache,
            "use_cache": True,
            "logits_to_keep": 1,
            "return_dict": True,
        }
        if image_patches is not None:
            weight_dtype = next(self.model.parameters()).dtype
            prefill_inputs["image_patches"] = image_patches.to(self.device, dtype=weight_dtype)
        logits = self.model(**prefill_inputs).logits
        next_ids = logits[:, -1, :].argmax(dim=-1)

        check_eos = eos_token_id is not None and not ignore_eos
        unfinished = torch.zeros(self.max_batch, dtype=torch.bool, device=self.device)
        unfinished[:rows] = True
        pad = torch.tensor(self.pad_token_id, dtype=torch.long, device=self.device)

        generated = []
        for step in range(max_new_tokens):
            if step > 0:
                # Feed the previous token: it goes to slot T + step - 1, which the mask now admits.
                self._mask[:, length + step - 1] = 1
                next_ids = self.decode_step(self._tokens, self._positions, self._mask)
            if check_eos:
                next_ids = torch.where(unfinished, next_ids, pad)
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
