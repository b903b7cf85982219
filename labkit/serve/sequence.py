"""One request as the engine sees it: its sampling parameters, its tokens, its place in the KV cache.

A `Sequence` is plain bookkeeping (no tensors): the scheduler moves it between queues, the block manager
fills in its block table, the engine appends the tokens the model produced and the time each arrived.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from enum import Enum

from labkit.core.bench import RequestTiming


@dataclass(frozen=True)
class SamplingParams:
    """How to pick and when to stop. temperature 0 is greedy (the course's correctness tests use it).

    `ignore_eos` keeps generating past the model's EOS (vLLM's benchmark does this so every request produces
    exactly `max_tokens`); `stop_token_ids` end the request even then, as in vLLM. `prompt_logprobs` (as vLLM's,
    for the chosen tokens only): the engine also records the log-probability of each prompt token given the
    ones before it, computed in whatever batch the request was served in (`Sequence.prompt_logprobs`): how a
    server's perplexity is measured as it serves."""

    max_tokens: int = 64
    temperature: float = 0.0
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    prompt_logprobs: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive int, got {self.max_tokens!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {t!r}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be True or False, got {self.ignore_eos!r}")
        stops = tuple(self.stop_token_ids)
        if any(isinstance(x, bool) or not isinstance(x, int) for x in stops):
            raise ValueError(f"stop_token_ids must be ints, got {self.stop_token_ids!r}")
        object.__setattr__(self, "stop_token_ids", stops)
        if not isinstance(self.prompt_logprobs, bool):
            raise ValueError(f"prompt_logprobs must be True or False, got {self.prompt_logprobs!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class SequenceStatus(Enum):
    """WAITING (queued, holds no blocks) -> RUNNING (holds blocks) -> one of the three terminal states.
    A preempted sequence goes from RUNNING back to WAITING."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


TERMINAL = (SequenceStatus.FINISHED, SequenceStatus.REJECTED, SequenceStatus.CANCELLED)


@dataclass(eq=False)
class Sequence:
    """A request and its progress. Compared by identity; `seq_id` is chosen by the caller (the engine).

    `num_cached_tokens` counts the leading tokens whose keys/values are already in the KV cache (prefix-cache
    hits at admission, then everything computed in earlier steps). A step computes the tokens
    `[num_cached_tokens, scheduled_end)`: the whole uncached prompt in a prefill (or, with chunked prefill, the
    next chunk of it), the last sampled token in a decode. Only the step that reaches `num_tokens` yields a
    token. Preemption drops the blocks and resets it to 0, so the prompt *and the output so far* are
    recomputed on readmission; the output tokens and their timestamps are kept, nothing is emitted twice.
    """

    seq_id: int
    prompt_token_ids: list[int]
    sampling_params: SamplingParams = field(default_factory=SamplingParams)
    arrival_time: float = field(default_factory=time.perf_counter)
    output_token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0
    scheduled_end: int | None = None  # the end of what this step computes (set by the scheduler)
    token_times: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    num_preemptions: int = 0
    # with SamplingParams.prompt_logprobs: entry i is log p(prompt token i | tokens before it), None for token 0
    # (nothing predicts it) and for tokens taken from the prefix cache (not computed)
    prompt_logprobs: list[float | None] | None = None

    def __post_init__(self) -> None:
        self.prompt_token_ids = list(self.prompt_token_ids)
        if self.sampling_params.prompt_logprobs and self.prompt_logprobs is None:
            self.prompt_logprobs = [None] * len(self.prompt_token_ids)

    # ------------------------------------------------------------------ sizes
    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def token_ids(self) -> list[int]:
        """Prompt then output: what a recompute after preemption feeds the model."""
        return self.prompt_token_ids + self.output_token_ids

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    def num_blocks(self, block_size: int) -> int:
        """KV blocks needed to hold all `num_tokens` tokens."""
        return math.ceil(self.num_tokens / block_size)

    def block_token_ids(self, i: int, block_size: int) -> list[int]:
        """The tokens that live in the sequence's i-th block (the last one may be partly filled)."""
        return self.token_ids[i * block_size:(i + 1) * block_size]

    # ------------------------------------------------------------------ state
    @property
    def is_finished(self) -> bool:
        """True in any terminal state: finished, rejected or cancelled."""
        return self.status in TERMINAL

    def append_token(self, token_id: int, now: float) -> None:
        """Record one generated token and when it became available (perf_counter seconds)."""
        self.output_token_ids.append(int(token_id))
        self.token_times.append(now)

    def finish(self, status: SequenceStatus, reason: str) -> None:
        """Enter a terminal state. The blocks must be freed first, so no block can leak with a dead request."""
        if status not in TERMINAL:
            raise ValueError(f"{status} is not a terminal state")
        if self.block_table:
            raise RuntimeError(f"sequence {self.seq_id} still holds blocks {self.block_table}; free them first")
        self.status = status
        self.finish_reason = reason

    def to_request_timing(self) -> RequestTiming:
        """The request's timing as `labkit.core.bench.summarize` expects it (TTFT, TPOT, ITL, E2E)."""
        return RequestTiming(start=self.arrival_time, token_times=list(self.token_times),
                             prompt_tokens=self.num_prompt_tokens)

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, {self.status.value}, prompt={self.num_prompt_tokens}, "
                f"output={self.num_output_tokens}, cached={self.num_cached_tokens}, "
                f"blocks={self.block_table}, reason={self.finish_reason!r})")
