"""Seeded request traces: the same list of requests replays against every server in notebook 05.

A trace fixes everything a server must not choose for itself: which prompt each request carries, how many
tokens it wants, and when it arrives (seconds after the run starts). Arrivals follow vLLM's serving
benchmark: all at once, or gaps drawn from a Gamma distribution with shape `burstiness` and mean `1 / rate`
(shape 1 is a Poisson process; below 1 the same mean rate comes in bursts and lulls).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from labkit.core.models import prompt_ids

ARRIVALS = ("all-at-once", "poisson", "gamma")


@dataclass(frozen=True)
class Request:
    """One request of a trace. `arrival_s` is the offset from the start of the run, not a clock time."""

    request_id: int
    arrival_s: float
    prompt_ids: tuple[int, ...]
    output_len: int

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)


def _lengths(spec: int | tuple[int, int], n: int, rng: np.random.Generator, name: str) -> list[int]:
    """A fixed length, or uniform integers in the inclusive range (lo, hi)."""
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        if spec < 1:
            raise ValueError(f"{name} must be >= 1, got {spec}")
        return [int(spec)] * n
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and all(isinstance(x, (int, np.integer)) for x in spec):
        lo, hi = int(spec[0]), int(spec[1])
        if not 1 <= lo <= hi:
            raise ValueError(f"{name} range must satisfy 1 <= lo <= hi, got ({lo}, {hi})")
        return [int(x) for x in rng.integers(lo, hi + 1, size=n)]
    raise ValueError(f"{name} must be an int or a (lo, hi) pair of ints, got {spec!r}")


def arrival_offsets(n: int, arrival: str = "all-at-once", rate: float | None = None, burstiness: float = 1.0,
                    rng: np.random.Generator | None = None) -> list[float]:
    """Arrival offsets in seconds, the first at 0. Gaps are Gamma(shape=burstiness, scale=1/(rate*burstiness)),
    so their mean is 1/rate whatever the burstiness and their coefficient of variation is 1/sqrt(burstiness).
    `rate=inf` with poisson/gamma means all at once, as in vLLM's benchmark."""
    if arrival not in ARRIVALS:
        raise ValueError(f"unknown arrival {arrival!r}; choose one of {ARRIVALS}")
    if not burstiness > 0 or math.isinf(burstiness):
        raise ValueError(f"burstiness must be a positive finite number (1.0 = Poisson), got {burstiness}")
    if arrival == "all-at-once":
        if rate is not None:
            raise ValueError("arrival='all-at-once' has no rate; pass rate=None, or use arrival='poisson'")
        return [0.0] * n
    if arrival == "poisson" and burstiness != 1.0:
        raise ValueError(f"a Poisson process has burstiness 1.0, got {burstiness}; use arrival='gamma'")
    if rate is None or not rate > 0:
        raise ValueError(f"arrival={arrival!r} needs rate > 0 (requests per second), got {rate}")
    if math.isinf(rate):
        return [0.0] * n
    rng = np.random.default_rng() if rng is None else rng
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=max(n - 1, 0))
    return [0.0] + np.cumsum(gaps).tolist()


class _TokenizeOnce:
    """`prompt_ids` tokenizes the whole held-out text per call; a trace asks for one excerpt per request,
    so the tokenization is done once and reused."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._memo: dict = {}

    def __call__(self, text, **kwargs):
        key = (text, tuple(sorted(kwargs.items())))
        if key not in self._memo:
            self._memo[key] = self.tokenizer(text, **kwargs)
        return self._memo[key]


def make_trace(n: int, prompt_len: int | tuple[int, int] = 512, output_len: int | tuple[int, int] = 128,
               arrival: str = "all-at-once", rate: float | None = None, burstiness: float = 1.0,
               vocab_size: int = 32000, seed: int = 0, tokenizer=None) -> list[Request]:
    """`n` requests sorted by arrival. Lengths are fixed or uniform in an inclusive (lo, hi) range; prompts are
    real held-out text with a tokenizer, seeded random ids in [3, vocab_size) without. Same arguments, same
    trace."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if tokenizer is None and vocab_size < 4:
        raise ValueError(f"vocab_size must be >= 4 (ids 0-2 are kept for special tokens), got {vocab_size}")
    rng = np.random.default_rng(seed)
    prompt_lens = _lengths(prompt_len, n, rng, "prompt_len")
    output_lens = _lengths(output_len, n, rng, "output_len")
    arrivals = arrival_offsets(n, arrival, rate, burstiness, rng)
    prompt_seeds = rng.integers(0, 2**31 - 1, size=n).tolist()
    tok = None if tokenizer is None else _TokenizeOnce(tokenizer)
    return [Request(i, float(arrivals[i]),
                    tuple(prompt_ids(prompt_lens[i], vocab_size=vocab_size, seed=prompt_seeds[i], tokenizer=tok)[0]
                          .tolist()),
                    output_lens[i])
            for i in range(n)]
