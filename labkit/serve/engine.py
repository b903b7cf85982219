"""The engine: requests in, tokens out, one scheduler iteration per `step()`.

    engine = LLMEngine.from_model(model, max_num_seqs=16)                 # labkit.serve.config.EngineConfig
    outputs = engine.generate(prompts, SamplingParams(max_tokens=64))      # blocking, a list of prompts
    sid = engine.add_request(ids, params); engine.step(); engine.cancel(sid)  # driving it yourself

Every request ends finished, rejected with a reason, or cancelled; `engine.get(sid)` keeps it afterwards
(`finish_reason`, output tokens, per-token timestamps -> `to_request_timing()` for labkit.core.bench).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch

from labkit.serve.config import EngineConfig
from labkit.serve.runner import ModelRunner
from labkit.serve.scheduler import Scheduler
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
        m = self.model
        if not isinstance(self.config, EngineConfig):
            raise TypeError(f"config must be a labkit.serve.EngineConfig, got {type(self.config).__name__}")
        c = self.config
        per_block = ModelRunner.kv_bytes_per_block(m, c.block_size)
        if c.num_blocks is None and c.cache_bytes < per_block:
            raise ValueError(f"kv_cache_bytes={c.cache_bytes} holds no KV block: one block of {c.block_size} tokens "
                             f"takes {per_block} bytes for this model")
        self.config = c = c.resolved(m.config.max_position_embeddings, c.cache_bytes // per_block)
        eos = m.config.eos_token_id
        self.scheduler = Scheduler(c, eos[0] if isinstance(eos, list) else eos)
        self.runner = ModelRunner(m, c.num_blocks, c.block_size, seed=c.seed, attention=c.attention)
        self.vocab_size = m.config.vocab_size
        self.requests: dict[int, Sequence] = {}
        self.stats: list[StepStat] = []
        self._next_id = 0

    @classmethod
    def from_model(cls, model, config: EngineConfig | None = None, **overrides) -> LLMEngine:
        """The way to build an engine: `config` (default EngineConfig()) with `overrides` replacing its fields,
        every option checked at once (labkit.serve.config), what is left None resolved from the model."""
        return cls(model, replace(config or EngineConfig(), **overrides))

    def add_request(self, prompt_ids: list[int], params: SamplingParams | None = None,
                    arrival_time: float | None = None) -> int:
        """Queue a request and return its id. A malformed request (token ids that are not ints in
        [0, vocab), parameters of the wrong type) raises RequestError naming the field, and nothing is queued;
        a well-formed one that can never run here (longer than the context or the cache) is rejected at once
        with the reason in its `finish_reason`. Nothing is truncated or converted silently."""
        return self._queue(*self._check(prompt_ids, params), arrival_time)

    def _check(self, prompt_ids, params) -> tuple[list[int], SamplingParams]:
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise RequestError("params", f"must be a SamplingParams, got {type(params).__name__}")
        return check_prompt(prompt_ids, self.vocab_size), params

    def _queue(self, ids: list[int], params: SamplingParams, arrival_time: float | None) -> int:
        seq = Sequence(self._next_id, ids, params, time.perf_counter() if arrival_time is None else arrival_time)
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
        (empty for a rejected request; see `get(id).finish_reason`). Every request is checked before any is
        queued: one malformed request raises RequestError (naming `prompts[i]`) and nothing runs."""
        from labkit.core.progress import tqdm

        plist = params if isinstance(params, list) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise RequestError("params", f"{len(plist)} SamplingParams for {len(prompts)} prompts")
        checked = []
        for i, (p, sp) in enumerate(zip(prompts, plist, strict=True)):  # all or nothing: check every one first
            try:
                checked.append(self._check(p, sp))
            except RequestError as e:
                raise RequestError(f"prompts[{i}].{e.field}", str(e).split(": ", 1)[1]) from e
        ids = [self._queue(p, sp, None) for p, sp in checked]
        with tqdm(total=len(ids), desc="engine", disable=not progress) as bar:
            while self.has_unfinished():
                bar.update(len(self.step()))
        return [list(self.requests[i].output_token_ids) for i in ids]
