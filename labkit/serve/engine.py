"""The engine: requests in, tokens out, one scheduler iteration per `step()`.

    engine = LLMEngine(model, EngineConfig(max_num_seqs=16))
    outputs = engine.generate(prompts, SamplingParams(max_tokens=64))      # blocking, a list of prompts
    sid = engine.add_request(ids, params); engine.step(); engine.cancel(sid)  # driving it yourself

Every request ends finished, rejected with a reason, or cancelled; `engine.get(sid)` keeps it afterwards
(`finish_reason`, output tokens, per-token timestamps -> `to_request_timing()` for labkit.core.bench).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from labkit.serve.runner import ModelRunner
from labkit.serve.scheduler import Scheduler, SchedulerConfig
from labkit.serve.sequence import SamplingParams, Sequence


class RequestError(ValueError):
    """A malformed request: `field` names what is wrong (the HTTP layer answers 400 with it)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def check_prompt(prompt_ids, vocab_size: int) -> list[int]:
    """The prompt as a list of ints, each in [0, vocab_size); anything else raises RequestError (a float, a
    bool or a string is not silently converted: 3.7 is not token 3)."""
    if hasattr(prompt_ids, "dim"):  # a torch tensor: one row of integers
        if prompt_ids.dim() != 1 or prompt_ids.is_floating_point() or prompt_ids.dtype == torch.bool:
            raise RequestError("prompt_ids", f"must be one row of integer ids, got a tensor of shape "
                                             f"{tuple(prompt_ids.shape)} and dtype {prompt_ids.dtype}")
        prompt_ids = prompt_ids.tolist()
    if not isinstance(prompt_ids, (list, tuple)):
        raise RequestError("prompt_ids", f"must be a list of token ids, got {type(prompt_ids).__name__}")
    out = list(prompt_ids)
    bad = next(((i, t) for i, t in enumerate(out) if isinstance(t, bool) or not isinstance(t, int)), None)
    if bad is not None:
        raise RequestError("prompt_ids", f"token {bad[0]} is {bad[1]!r} ({type(bad[1]).__name__}), not an int")
    bad = next(((i, t) for i, t in enumerate(out) if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise RequestError("prompt_ids", f"token {bad[0]} is {bad[1]}, outside the vocabulary [0, {vocab_size})")
    return out


@dataclass
class EngineConfig:
    """`num_blocks=None` sizes the KV cache from `kv_cache_bytes`; `max_model_len=None` takes the model's
    context length. With chunked prefill (the default) `max_num_batched_tokens` is the tokens one step computes
    (decodes first, then chunks of prefills; None: 512); without it, a prefill is never split and the budget
    must hold the longest prompt (None: max_model_len)."""

    max_num_seqs: int = 16
    max_num_batched_tokens: int | None = None
    block_size: int = 16
    num_blocks: int | None = None
    kv_cache_bytes: int = 1 << 30
    max_model_len: int | None = None
    enable_prefix_caching: bool = False
    mixed_batches: bool = True  # running sequences keep decoding while new prompts are prefilled
    enable_chunked_prefill: bool = True  # long prompts split across steps so running requests never stall
    attention: str = "sdpa"  # or "eager" (see labkit.serve.runner)
    seed: int = 0


@dataclass
class StepStat:
    """What one iteration did: for the batch-occupancy plot."""

    time: float
    is_prefill: bool
    num_seqs: int
    num_tokens: int
    num_waiting: int
    num_preempted: int


@dataclass
class LLMEngine:
    model: object
    config: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        c, m = self.config, self.model
        max_len = c.max_model_len or m.config.max_position_embeddings
        blocks = c.num_blocks or max(1, c.kv_cache_bytes // ModelRunner.kv_bytes_per_block(m, c.block_size))
        eos = m.config.eos_token_id
        budget = c.max_num_batched_tokens or (max(512, c.max_num_seqs) if c.enable_chunked_prefill else max_len)
        self.scheduler = Scheduler(SchedulerConfig(
            max_num_seqs=c.max_num_seqs, max_num_batched_tokens=budget,
            block_size=c.block_size, num_blocks=blocks, max_model_len=max_len,
            eos_token_id=eos[0] if isinstance(eos, list) else eos, enable_prefix_caching=c.enable_prefix_caching,
            mixed_batches=c.mixed_batches, enable_chunked_prefill=c.enable_chunked_prefill))
        self.runner = ModelRunner(m, blocks, c.block_size, seed=c.seed, attention=c.attention)
        self.vocab_size = m.config.vocab_size
        self.requests: dict[int, Sequence] = {}
        self.stats: list[StepStat] = []
        self._next_id = 0

    def add_request(self, prompt_ids: list[int], params: SamplingParams | None = None,
                    arrival_time: float | None = None) -> int:
        """Queue a request and return its id. A malformed request (token ids that are not ints in
        [0, vocab), parameters of the wrong type) raises RequestError naming the field, and nothing is queued;
        a well-formed one that can never run here (longer than the context or the cache) is rejected at once
        with the reason in its `finish_reason`. Nothing is truncated or converted silently."""
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise RequestError("params", f"must be a SamplingParams, got {type(params).__name__}")
        seq = Sequence(self._next_id, check_prompt(prompt_ids, self.vocab_size), params,
                       time.perf_counter() if arrival_time is None else arrival_time)
        self._next_id += 1
        self.requests[seq.seq_id] = seq
        self.scheduler.add(seq)
        return seq.seq_id

    def cancel(self, seq_id: int) -> bool:
        """Stop a request now; its KV blocks are freed at once. False if it had already ended."""
        return self.scheduler.cancel(seq_id) is not None

    def get(self, seq_id: int) -> Sequence:
        return self.requests[seq_id]

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[Sequence]:
        """One iteration: schedule, run the model on the picked tokens, append one token to each sequence.
        Returns the sequences that finished in this step."""
        out = self.scheduler.schedule()
        if out.is_empty:
            return []
        tokens = self.runner.run(out)
        finished = self.scheduler.postprocess(out.seqs, tokens)
        self.stats.append(StepStat(time.perf_counter(), out.is_prefill, len(out.scheduled),
                                   out.num_batched_tokens, self.scheduler.num_waiting, len(out.preempted)))
        return finished

    def stream(self) -> Iterator[tuple[int, int, float]]:
        """Step until no request is left, yielding (request id, token id, timestamp) as tokens appear."""
        while self.has_unfinished():
            seen = {sid: s.num_output_tokens for sid, s in self.requests.items() if not s.is_finished}
            self.step()
            for sid, n in seen.items():
                seq = self.requests[sid]
                for tok, t in zip(seq.output_token_ids[n:], seq.token_times[n:], strict=True):
                    yield sid, tok, t

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None,
                 progress: bool = False) -> list[list[int]]:
        """Blocking: run every prompt to the end and return the output token ids in prompt order
        (empty for a rejected request; see `get(id).finish_reason`)."""
        from labkit.core.progress import tqdm

        plist = params if isinstance(params, list) else [params] * len(prompts)
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, plist, strict=True)]
        with tqdm(total=len(ids), desc="engine", disable=not progress) as bar:
            while self.has_unfinished():
                bar.update(len(self.step()))
        return [list(self.requests[i].output_token_ids) for i in ids]
