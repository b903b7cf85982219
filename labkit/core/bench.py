"""The timing harness the whole course uses.

- `time_callable`: the cold (first) call apart, warm-up, then repeats; median, p90, min, max.
- `RequestTiming` + `summarize`: LLM serving metrics exactly as vLLM's serving benchmark defines them:
  TTFT, TPOT = (E2E - TTFT) / (output tokens - 1), ITL (every gap between consecutive tokens), E2E;
  request throughput, output tokens/s, total tokens/s over the benchmark's duration; percentiles with numpy.
- `compare`: A and B run alternately in one process; the speed-up is the median of pair-by-pair ratios.
- `generate_timed`: per-token timestamps from Hugging Face `generate` through a streamer.
Every side-by-side run is watched for other processes' load (labkit.core.load, re-exported here as
`bench.LoadWatch` and `bench.fit_threads`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from labkit.core.load import LoadWatch, fit_threads  # noqa: F401 (fit_threads: bench.fit_threads callers)

PERCENTILES = (50, 90, 99)


def sync(device) -> None:
    """Wait for a CUDA device to finish queued work (a no-op on the CPU) before reading the clock."""
    if device is None:
        return
    import torch

    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@dataclass
class Timing:
    """Seconds. `cold_s` is the very first call (includes one-time costs); the rest is steady state."""

    cold_s: float
    times_s: list[float]

    @property
    def median_s(self) -> float:
        return float(np.median(self.times_s))

    @property
    def p90_s(self) -> float:
        return float(np.percentile(self.times_s, 90))

    @property
    def min_s(self) -> float:
        return float(min(self.times_s))

    @property
    def max_s(self) -> float:
        return float(max(self.times_s))

    @property
    def cold_over_warm(self) -> float:
        """How many times slower the first call was than the steady-state median."""
        return self.cold_s / self.median_s

    def to_dict(self) -> dict:
        return {"cold_s": self.cold_s, "median_s": self.median_s, "p90_s": self.p90_s, "min_s": self.min_s,
                "max_s": self.max_s, "repeats": len(self.times_s), "cold_over_warm": self.cold_over_warm,
                "times_s": list(self.times_s)}


def time_callable(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5, device=None) -> Timing:
    """Time `fn()`: the first call is timed as the cold start; `warmup - 1` more calls are discarded;
    then `repeats` timed calls. Synchronizes CUDA around every timed call when `device` is a GPU."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    if warmup < 1:
        raise ValueError("warmup must be >= 1 (the first call is the cold start and never counts)")
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    cold = time.perf_counter() - t0
    for _ in range(warmup - 1):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return Timing(cold_s=cold, times_s=times)


# ---------------------------------------------------------------- side by side: rotating rounds

NOISE_FLOOR = 0.05  # a ratio within 5% of 1 is called inconclusive unless a measured noise floor is given


@dataclass
class Ratio:
    """B against A from rounds measured side by side: `values` per round, `value` their median; > 1 means B is
    better (faster, or more throughput). `noise` is the floor a difference must exceed to count (a fraction:
    0.05 = 5%), e.g. the A-against-A spread notebook 00 measures."""

    values: list[float]
    noise: float = NOISE_FLOOR

    @property
    def value(self) -> float:
        return float(statistics.median(self.values))

    @property
    def conclusive(self) -> bool:
        """Beyond the noise floor, and most rounds (at least 80%) agree on the direction."""
        v = self.value
        if abs(v - 1) <= self.noise:
            return False
        same_side = sum((x > 1) == (v > 1) for x in self.values)
        return same_side >= 0.8 * len(self.values)

    def words(self, better: str = "faster", worse: str = "slower") -> str:
        """The ratio in words, built from the numbers: '2.50x faster', '1.30x slower' (as the inverse), or
        'inconclusive (1.03x, inside the noise of ±5%)'."""
        v = self.value
        if not self.conclusive:
            return (f"inconclusive ({v:.2f}x, rounds {min(self.values):.2f}-{max(self.values):.2f}x, "
                    f"noise floor ±{self.noise:.0%})")
        return f"{v:.2f}x {better}" if v > 1 else f"{1 / v:.2f}x {worse}"

    def to_dict(self) -> dict:
        return {"value": self.value, "values": list(self.values), "noise": self.noise,
                "conclusive": self.conclusive}

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass
class Rounds:
    """Candidates timed in rotating rounds: each round runs every candidate once, starting one further along
    each time (round 0: A B C, round 1: B C A, ...), so slow drift in the machine (another process, clocks,
    thermals) hits every candidate alike. The first call of each, before the rounds, is kept apart (`cold`).

    `values[name][metric]` lists one value per round: "s" is the wall time of the call; a candidate that
    returns a dict adds its own metrics (e.g. {"ttft": ..., "tpot": ...} or {"throughput": ...})."""

    names: list[str]
    cold: dict[str, dict[str, float]]
    values: dict[str, dict[str, list[float]]]
    load: dict = field(default_factory=dict)
    asked: int = 0  # rounds asked for, where a deadline stopped them early (`run_rounds`); 0: all ran
    round_s: float = 0.0  # the longest round's wall time, where a deadline was given

    @property
    def done(self) -> int:
        """Rounds that ran."""
        return len(next(iter(self.values[self.names[0]].values()), [])) if self.names else 0

    def median(self, name: str, metric: str = "s") -> float:
        return float(statistics.median(self.values[name][metric]))

    def ratio(self, a: str, b: str, metric: str = "s", higher_is_better: bool = False,
              noise: float | None = None) -> Ratio:
        """B against A, per round, then the median: for times (lower is better) A/B, for rates B/A; > 1
        means B is better either way."""
        va, vb = self.values[a][metric], self.values[b][metric]
        per = [(y / x if higher_is_better else x / y) for x, y in zip(va, vb, strict=True)]
        return Ratio(per, NOISE_FLOOR if noise is None else noise)

    def to_dict(self) -> dict:
        return {"names": self.names, "cold": self.cold, "values": self.values, "load": self.load,
                "asked": self.asked or self.done, "round_s": self.round_s}


def run_rounds(candidates: dict[str, Callable[[], object]], rounds: int, *, cold: bool = True, device=None,
               progress: bool = True, desc: str = "timing rounds", deadline: float | None = None) -> Rounds:
    """Time every candidate once per round in rotating order (see `Rounds`), after one cold call each (kept
    apart; `cold=False` skips it when the caller has warmed up already). A candidate returning a dict of
    numbers has them recorded per round next to its wall time. The machine's load is watched throughout
    and a warning printed when another process was busy. With a `deadline` (a time.perf_counter() value), a round
    that would end past it (judged by the longest round so far) is not started: at least one round runs, and the
    Rounds say how many were asked (`asked`) and how long a round took (`round_s`)."""
    from labkit.core.progress import tqdm

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not candidates:
        raise ValueError("no candidates to time")
    names = list(candidates)

    def once(name: str) -> dict[str, float]:
        sync(device)
        t0 = time.perf_counter()
        out = candidates[name]()
        sync(device)
        got = {"s": time.perf_counter() - t0}
        if isinstance(out, dict):
            got.update({k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and v is not None})
        return got

    longest, stopped = 0.0, False
    with LoadWatch() as watch:
        first = {n: once(n) for n in names} if cold else {}
        values: dict[str, dict[str, list[float]]] = {n: {} for n in names}
        for r in tqdm(range(rounds), desc=desc, disable=not progress):
            if r and deadline is not None and time.perf_counter() + longest > deadline:
                stopped = True  # the next round would end past the deadline: stop, and say so (Rounds.asked)
                break
            k, t0 = r % len(names), time.perf_counter()
            for name in names[k:] + names[:k]:
                for metric, v in once(name).items():
                    values[name].setdefault(metric, []).append(v)
            longest = max(longest, time.perf_counter() - t0)
    if watch.warning:
        print(f"note: {watch.warning}")
    return Rounds(names, first, values, watch.result, asked=rounds if stopped else 0,
                  round_s=longest if deadline is not None else 0.0)


@dataclass
class Comparison:
    """B against A, measured alternately. `speedup` = median over pairs of time_A / time_B (> 1: B faster)."""

    name_a: str
    name_b: str
    times_a: list[float]
    times_b: list[float]
    cold_a: float
    cold_b: float
    load: dict = field(default_factory=dict)

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.times_a, self.times_b, strict=True)]

    @property
    def speedup(self) -> float:
        return float(statistics.median(self.ratios))

    def ratio(self, noise: float | None = None) -> Ratio:
        return Ratio(self.ratios, NOISE_FLOOR if noise is None else noise)

    @property
    def noise(self) -> float:
        """The largest deviation of a pair's ratio from 1: for A against itself, this machine's noise floor."""
        return max(abs(r - 1) for r in self.ratios)

    def to_dict(self) -> dict:
        return {"a": self.name_a, "b": self.name_b, "speedup": self.speedup, "ratios": self.ratios,
                "median_a_s": float(np.median(self.times_a)), "median_b_s": float(np.median(self.times_b)),
                "cold_a_s": self.cold_a, "cold_b_s": self.cold_b, "load": self.load}

    def __str__(self) -> str:
        r = self.ratios
        return (f"{self.name_b} vs {self.name_a}: {self.speedup:.2f}x "
                f"(pairs {min(r):.2f}..{max(r):.2f}, n={len(r)}; "
                f"median {np.median(self.times_a) * 1e3:.1f} ms -> {np.median(self.times_b) * 1e3:.1f} ms)")


def compare(a: Callable[[], object], b: Callable[[], object], *, repeats: int = 5, warmup: int = 1,
            names: tuple[str, str] = ("A", "B"), device=None, progress: bool = False) -> Comparison:
    """A and B in rotating rounds (`run_rounds` with two candidates is ABBA order, so slow drift cancels);
    the pairs' time ratios. `warmup - 1` untimed calls of each follow the cold ones."""
    if repeats < 1 or warmup < 1:
        raise ValueError("repeats and warmup must be >= 1")
    if names[0] == names[1]:
        names = (names[0], f"{names[1]} (again)")
    ta, tb = _cold_pair(a, b, device)
    for _ in range(warmup - 1):
        a()
        b()
    r = run_rounds({names[0]: a, names[1]: b}, repeats, cold=False, device=device, progress=progress)
    return Comparison(names[0], names[1], r.values[names[0]]["s"], r.values[names[1]]["s"], ta, tb, r.load)


def _cold_pair(a, b, device) -> tuple[float, float]:
    out = []
    for fn in (a, b):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out[0], out[1]


# ---------------------------------------------------------------- serving metrics (vLLM definitions)

@dataclass
class RequestTiming:
    """One request: when it was sent and when each output token arrived (perf_counter seconds).
    `service_start`: when the server began working on it (after any queueing), where the server knows it."""

    start: float
    token_times: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    service_start: float | None = None

    @property
    def output_tokens(self) -> int:
        return len(self.token_times)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.start

    @property
    def e2e(self) -> float:
        return self.token_times[-1] - self.start

    @property
    def tpot(self) -> float | None:
        """(E2E - TTFT) / (output tokens - 1); undefined for a one-token output (vLLM skips those)."""
        n = self.output_tokens
        return (self.e2e - self.ttft) / (n - 1) if n > 1 else None

    @property
    def itls(self) -> list[float]:
        t = self.token_times
        return [t[i] - t[i - 1] for i in range(1, len(t))]

    def to_dict(self) -> dict:
        return asdict(self)


def _dist(values_s: Sequence[float], prefix: str) -> dict:
    """mean/median/std and percentiles, in milliseconds, as vLLM reports them."""
    if len(values_s) == 0:
        return {f"{prefix}_mean_ms": None, f"{prefix}_median_ms": None, f"{prefix}_std_ms": None,
                **{f"{prefix}_p{p}_ms": None for p in PERCENTILES}}
    v = np.asarray(values_s, dtype=float) * 1e3
    out = {f"{prefix}_mean_ms": float(v.mean()), f"{prefix}_median_ms": float(np.median(v)),
           f"{prefix}_std_ms": float(v.std())}
    for p in PERCENTILES:
        out[f"{prefix}_p{p}_ms"] = float(np.percentile(v, p))
    return out


def summarize(requests: Sequence[RequestTiming], duration_s: float | None = None,
              slo_ms: dict | None = None) -> dict:
    """Aggregate serving metrics over completed requests (those with at least one token). Requests that
    produced nothing (rejected, cancelled, errored) are counted in `failed`, as vLLM's benchmark does, so an
    average over the survivors is never mistaken for one over every request sent.

    duration_s defaults to first send -> last token. `slo_ms` like {"ttft": 500, "tpot": 50} adds goodput:
    requests per second that met every stated SLO (vLLM's definition)."""
    done = [r for r in requests if r.output_tokens > 0]
    if not done:
        raise ValueError(f"no completed requests to summarize ({len(requests)} sent, all failed)")
    if duration_s is None:
        duration_s = max(r.token_times[-1] for r in done) - min(r.start for r in done)
    if duration_s <= 0:
        raise ValueError("duration must be positive")
    out_tok = sum(r.output_tokens for r in done)
    in_tok = sum(r.prompt_tokens for r in done)
    m = {
        "completed": len(done),
        "failed": len(requests) - len(done),
        "duration_s": duration_s,
        "total_input_tokens": in_tok,
        "total_output_tokens": out_tok,
        "request_throughput": len(done) / duration_s,
        "output_throughput": out_tok / duration_s,
        "total_token_throughput": (in_tok + out_tok) / duration_s,
    }
    m.update(_dist([r.ttft for r in done], "ttft"))
    m.update(_dist([r.tpot for r in done if r.tpot is not None], "tpot"))
    m.update(_dist([x for r in done for x in r.itls], "itl"))
    m.update(_dist([r.e2e for r in done], "e2e"))
    if slo_ms:
        unknown = set(slo_ms) - {"ttft", "tpot", "e2e"}
        if unknown:
            raise ValueError(f"unknown SLO keys {sorted(unknown)}; use ttft, tpot, e2e")

        def ok(r: RequestTiming) -> bool:
            vals = {"ttft": r.ttft, "tpot": r.tpot or 0.0, "e2e": r.e2e}
            return all(vals[k] * 1e3 <= lim for k, lim in slo_ms.items())

        m["goodput"] = sum(ok(r) for r in done) / duration_s
        m["slo_ms"] = dict(slo_ms)
    return m


# ---------------------------------------------------------------- per-token timestamps from HF generate

class TimestampStreamer:
    """A transformers streamer that records when each new token arrives. The first `put` is the prompt."""

    def __init__(self, device=None):
        self.device = device
        self.times: list[float] = []
        self._seen_prompt = False

    def put(self, value) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        value.tolist()  # forces the device to finish computing this token before we stamp it
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def generate_timed(model, input_ids, max_new_tokens: int, **generate_kwargs) -> tuple[RequestTiming, object]:
    """Greedy `model.generate` of exactly `max_new_tokens` tokens (EOS ignored, like vLLM's benchmark)
    with per-token timestamps. Batch size must be 1 (the streamer follows one sequence)."""
    import torch

    if input_ids.shape[0] != 1:
        raise ValueError("generate_timed times one request; pass input_ids of batch size 1")
    streamer = TimestampStreamer()
    kw = {"do_sample": False, "min_new_tokens": max_new_tokens, "max_new_tokens": max_new_tokens,
          "attention_mask": torch.ones_like(input_ids)}
    kw.update(generate_kwargs)
    sync(input_ids.device)
    start = time.perf_counter()
    out = model.generate(input_ids=input_ids, streamer=streamer, **kw)
    rt = RequestTiming(start=start, token_times=streamer.times, prompt_tokens=int(input_ids.shape[1]))
    return rt, out


def measure_requests(model, prompts, max_new_tokens: int, repeats: int = 3, progress: bool = True,
                     **generate_kwargs) -> tuple[RequestTiming, list[RequestTiming]]:
    """One request at a time through `generate`: the first call is the cold start (returned apart), then
    `repeats` passes over `prompts` (a tensor [n, prompt_len] or a list of [1, len] tensors) in steady state.
    """
    from labkit.core.progress import tqdm

    rows = [p.unsqueeze(0) if p.dim() == 1 else p for p in prompts]
    cold, _ = generate_timed(model, rows[0], max_new_tokens, **generate_kwargs)
    warm = []
    todo = [r for _ in range(repeats) for r in rows]
    for ids in tqdm(todo, desc="requests", disable=not progress, mininterval=2):
        rt, _ = generate_timed(model, ids, max_new_tokens, **generate_kwargs)
        warm.append(rt)
    return cold, warm
