"""Notebook 09's experiment: one trace served by the same engine in process and over HTTP, side by side.

`side_by_side` replays the trace against an in-process `LLMEngine` (labkit.serve.baselines.run_engine) and against
`python -m labkit serve` (labkit.serve.client) in rotating rounds, with the CPU time each path used per output token
(the server's process and the client's, read with psutil), so the cost of the HTTP and streaming layer is a ratio
measured side by side and a number of milliseconds, never two runs taken at different times.
`your_server` replays the same trace against a learner's OpenAI-compatible server, or says why it did not.
`settings` checks the notebook's parameters and `cost_figure` draws its figure, so the cells stay short.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from labkit.core.bench import Rounds, run_rounds, summarize
from labkit.core.models import ShapeSpec
from labkit.serve import client as bench_http
from labkit.serve.baselines import run_engine
from labkit.serve.workload import Request

METRICS = ("ttft_median_ms", "tpot_median_ms", "itl_median_ms", "e2e_median_ms", "output_throughput")
IN, HTTP = "in process", "over HTTP"
ROWS = (  # (metric, label, words for a ratio: (better, worse) with higher_is_better, or None for no ratio)
    ("tpot_median_ms", "TPOT median (ms per output token)", ("faster", "slower"), False),
    ("itl_median_ms", "ITL median (ms between tokens)", ("faster", "slower"), False),
    ("ttft_median_ms", "TTFT median (ms)", ("faster", "slower"), False),
    ("e2e_median_ms", "E2E median (ms)", ("faster", "slower"), False),
    ("output_throughput", "output tokens/s", ("higher", "lower"), True),
    ("engine_ms_per_token", "engine step time per output token (ms)", ("faster", "slower"), False),
    ("tokens_per_step", "output tokens per engine step", None, False),
    ("cpu_cores", "CPU cores busy: the engine's process", None, False),
    ("client_cpu_cores", "CPU cores busy: the HTTP client", None, False),
)


class Settings(NamedTuple):
    """Notebook 09's parameters after checking, with every size its preset decides (unpacks in this order)."""

    device: str  # "auto" resolved
    layers: int | None  # decoder layers of a shape model; None for any other model
    n_requests: int
    prompt_len: int
    output_len: int
    rate: float  # Poisson arrivals, requests/s
    rounds: int  # rotating rounds of the side-by-side comparison


def settings(preset: str, *, model: str, layers, device: str, dtype: str, seed: int, n_requests, prompt_len,
             output_len, rate, max_batch: int, kv_cache_gib: float, rounds, url: str, url_model: str, url_text: bool,
             timeout_s: float) -> Settings:
    """Check notebook 09's parameters in the order its parameters cell lists them (a bad one fails at once, naming
    what is valid: labkit.core.params) and fill in what the preset decides."""
    from labkit.core.models import SHAPES
    from labkit.core.params import ParamError, check, default, resolve_device

    device = resolve_device(device)
    check("dtype", dtype, str, choices=("fp32", "bf16"))
    for name, value, lo in [("seed", seed, 0), ("max_batch", max_batch, 1)]:
        check(name, value, int, min=lo)
    for name, value, kind in [("url", url, str), ("url_model", url_model, str), ("url_text", url_text, bool)]:
        check(name, value, kind)
    check("timeout_s", timeout_s, float, min=0.1)
    check("kv_cache_gib", kv_cache_gib, float, min=0.01)
    if layers is not None and model not in SHAPES:
        raise ParamError(f"layers applies to shape models ({sorted(SHAPES)}), not to {model!r}")
    return Settings(device, default("layers", layers, preset, ci=2, full=4, min=1) if model in SHAPES else None,
                    default("n_requests", n_requests, preset, ci=16, full=64, min=2),
                    default("prompt_len", prompt_len, preset, ci=64, full=256, min=1),
                    default("output_len", output_len, preset, ci=32, full=128, min=2),
                    default("rate", rate, preset, ci=20.0, full=8.0, kind=float, min=1e-3),
                    default("rounds", rounds, preset, ci=4, full=8, min=1))


def server_args(model: str, layers: int | None, dtype: str, device: str, max_batch: int, kv_cache_gib: float,
                seed: int) -> list[str]:
    """`python -m labkit serve` arguments for the same engine `labkit.serve.api.engine_config` builds here."""
    args = ["--model", model, "--dtype", dtype, "--device", device, "--max-batch", str(max_batch),
            "--kv-cache-gib", str(kv_cache_gib), "--seed", str(seed)]
    return args + (["--layers", str(layers)] if layers is not None else [])


def _cpu_s(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system


class _StepClock:
    """Counts an in-process engine's steps and the seconds spent inside them (the server reports the same numbers
    on /metrics: labkit:engine_steps_total, labkit:engine_step_seconds_total)."""

    def __init__(self, engine):
        self.steps, self.seconds, self._step = 0, 0.0, engine.step
        engine.step = self

    def __call__(self):
        t0 = time.perf_counter()
        try:
            return self._step()
        finally:
            self.steps += 1
            self.seconds += time.perf_counter() - t0


def _server_steps(url: str) -> tuple[float, float]:
    import httpx

    from labkit.serve.api import parse_metrics

    m = parse_metrics(httpx.get(f"{url}/metrics", timeout=30).text)
    return m["labkit:engine_steps_total"], m["labkit:engine_step_seconds_total"]


@dataclass
class SideBySide:
    rounds: Rounds
    same_tokens: float  # fraction of requests with the same greedy tokens over HTTP as in process (last round)
    output_tokens: int  # per replay

    def median(self, who: str, metric: str) -> float:
        return self.rounds.median(who, metric)

    def table(self) -> list[dict]:
        """One row per metric: the medians over rounds, the per-round difference and, for speeds, the ratio in
        words (rows a path does not have are left empty)."""
        rows = []
        for metric, label, words, higher in ROWS:
            a, b = self.rounds.values[IN].get(metric), self.rounds.values[HTTP].get(metric)
            row = {"metric": label, IN: statistics.median(a) if a else None, HTTP: statistics.median(b) if b else None}
            if a and b:
                row["HTTP minus in process (median of rounds)"] = statistics.median(y - x for x, y in
                                                                                    zip(a, b, strict=True))
                if words:
                    row["over HTTP it is"] = self.rounds.ratio(IN, HTTP, metric, higher_is_better=higher).words(*words)
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        return {"rounds": self.rounds.to_dict(), "same_tokens": self.same_tokens, "output_tokens": self.output_tokens,
                "table": self.table()}


def side_by_side(engine, server, served_name: str, trace: Sequence[Request], rounds: int, extra: dict,
                 progress: bool = True) -> SideBySide:
    """Rotating rounds of the trace in process (`engine`) and over HTTP (`server`: a labkit.serve.api.ServerProcess
    serving the same model with the same engine settings). Besides vLLM's metrics each candidate reports the
    engine's step time per output token and tokens per step (in process: timed around `engine.step`; in the
    server: from /metrics), and the CPU cores busy over the replay (psutil: this process in process; the server's
    process and, apart, this one as the client over HTTP). A failed HTTP request fails the run: labkit's own
    server must not lose one."""
    import psutil

    me, srv = psutil.Process(), psutil.Process(server.process.pid)
    clock = engine.step if isinstance(engine.step, _StepClock) else _StepClock(engine)
    outputs: dict[str, list] = {}

    def in_process() -> dict:
        c0, n0, s0, w0 = _cpu_s(me), clock.steps, clock.seconds, time.perf_counter()
        timings, outs = run_engine(engine, trace)
        wall, cpu = time.perf_counter() - w0, _cpu_s(me) - c0
        s = summarize(timings)
        outputs[IN] = outs
        n = s["total_output_tokens"]
        return {**{k: s[k] for k in METRICS}, "engine_ms_per_token": (clock.seconds - s0) * 1e3 / n,
                "tokens_per_step": n / (clock.steps - n0), "cpu_cores": cpu / wall}

    def over_http() -> dict:
        (n0, s0), c0, v0, w0 = _server_steps(server.url), _cpu_s(me), _cpu_s(srv), time.perf_counter()
        replay = bench_http.run(server.url, served_name, trace, extra=extra)
        wall, client, served = time.perf_counter() - w0, _cpu_s(me) - c0, _cpu_s(srv) - v0
        n1, s1 = _server_steps(server.url)
        s = replay.summary()
        if s["failed"]:
            raise RuntimeError(f"labkit's server lost requests: {replay.describe()}")
        outputs[HTTP] = replay.outputs
        n = s["total_output_tokens"]
        return {**{k: s[k] for k in METRICS}, "engine_ms_per_token": (s1 - s0) * 1e3 / n,
                "tokens_per_step": n / (n1 - n0), "cpu_cores": served / wall, "client_cpu_cores": client / wall,
                "client_cpu_ms_per_token": client * 1e3 / n}

    r = run_rounds({IN: in_process, HTTP: over_http}, rounds, progress=progress, desc="in process / over HTTP")
    same = sum(a == b for a, b in zip(outputs[IN], outputs[HTTP], strict=True)) / len(trace)
    return SideBySide(r, same, sum(x.output_len for x in trace))


def model_spec(model) -> ShapeSpec:
    """The model's dimensions as a ShapeSpec (a shape model carries its own), for the roofline floors."""
    spec = getattr(model, "labkit_shape", None)
    if spec is not None:
        return spec
    from labkit.core.models import spec_of_config

    return spec_of_config(model.config)  # experts, head_dim and q/k norms read as each family names them


def floor_fractions(side: SideBySide, floor, dtype: str, source: str = "notebook 01's profile") -> list:
    """The fraction of the decode-step floor each path's median TPOT reached (in process, over HTTP), through
    labkit.core.floors.of_floors: a floor either path beat names the rate that was wrong and is re-derived from the
    fastest rate either path reached (one list of FloorFraction, IN then HTTP)."""
    from labkit.core.floors import of_floors

    return of_floors([side.median(who, "tpot_median_ms") / 1e3 for who in (IN, HTTP)], [floor, floor],
                     compute=f"{dtype} matmul", source=source)


def floor_rows(side: SideBySide, floor, hw, dtype: str, source: str = "notebook 01's profile") -> list[dict]:
    """TPOT in process and over HTTP next to the floor of one full-batch decode step (a request gets one token per
    step, so its TPOT cannot beat that step's floor), with the fraction reached and the sentence explaining it. A
    floor a path beat is re-derived (`floor_fractions`): its reason is stored beside the fraction ("fraction of the
    floor_reason"; print it with labkit.core.floors.reasons, show the table with floors.shown)."""
    from labkit.core.roofline import against_floor

    rows = []
    for who, f in zip((IN, HTTP), floor_fractions(side, floor, dtype, source), strict=True):
        why = ("the profile's floor was beaten, so it was re-derived (the reason is below the table)" if f.reason
               else against_floor(floor, f.measured_s, hw, dtype))
        rows.append({"path": who, "TPOT median (ms)": f.measured_s * 1e3, "decode-step floor (ms)": f.floor_s * 1e3,
                     **f.fields("fraction of the floor"), "bound": floor.bound, "why": why})
    return rows


def meaning(side: SideBySide, cores: int) -> list[str]:
    """'What this means', from the measured numbers."""
    med = side.median
    rows = {r["metric"]: r for r in side.table()}
    tpot, thr, eng = rows[ROWS[0][1]], rows[ROWS[4][1]], rows[ROWS[5][1]]
    tpot_in, tpot_http = med(IN, "tpot_median_ms"), med(HTTP, "tpot_median_ms")
    e_in, e_http = med(IN, "engine_ms_per_token"), med(HTTP, "engine_ms_per_token")
    k_in, k_http = med(IN, "tokens_per_step"), med(HTTP, "tokens_per_step")
    r_eng, r_tpot = side.rounds.ratio(IN, HTTP, "engine_ms_per_token"), side.rounds.ratio(IN, HTTP, "tpot_median_ms")
    # every number of this sentence is taken round by round (the medians of each side apart can tell another story
    # when rounds vary: 15.90 -> 31.92 ms read as 2.01x beside a per-round 1.84x and +13.59 ms)
    n = len(side.rounds.values[IN]["tpot_median_ms"])
    out = [f"Over HTTP a request waited {tpot['HTTP minus in process (median of rounds)']:+.2f} ms more per output "
           f"token than the same engine in process ({tpot['over HTTP it is']}, {1 / r_tpot.value - 1:+.0%} of the "
           f"in-process time per token; each the median of {n} rounds' own difference or ratio; the medians of TPOT "
           f"apart: {tpot_in:.2f} ms in process, {tpot_http:.2f} ms over HTTP). Output throughput over HTTP: "
           f"{thr['over HTTP it is']}."]
    engine_slower = r_eng.conclusive and r_eng.value < 1
    if engine_slower:
        why = "part of the cost is the engine itself running slower next to the HTTP layer, not only the layer's work."
    elif r_tpot.conclusive and r_tpot.value < 1:
        why = "the engine ran no slower than in process, so the extra time per token is spent outside its steps."
    else:
        why = "the engine ran no slower than in process."
    out.append(f"Inside the server the engine's own steps took {e_http:.2f} ms per output token against {e_in:.2f} ms "
               f"in process ({eng['over HTTP it is']}), at {k_http:.1f} tokens per step against {k_in:.1f}: {why}")
    c_in, c_http, c_cli = med(IN, "cpu_cores"), med(HTTP, "cpu_cores"), med(HTTP, "client_cpu_cores")
    text = (f"CPU cores busy, of {cores}: {c_in:.2f} in process; over HTTP {c_http:.2f} for the server's process "
            f"and {c_cli:.2f} for the client ({med(HTTP, 'client_cpu_ms_per_token'):.2f} ms of CPU per token to read "
            "the stream)")
    if c_http + c_cli < c_in - 0.1 and engine_slower:
        text += (". With cores to spare, the server's engine still took longer per step: its threads spent part of "
                 "each step waiting rather than computing")
    out.append(text + ".")
    out.append(f"{side.same_tokens:.0%} of the requests got the same greedy tokens over HTTP as in process.")
    if tpot_http > tpot_in:
        out.append("The HTTP layer's cost comes per token and per request, not per FLOP: the shorter a decode step "
                   "(a small model, a fast GPU), the larger its share; a step ten times longer hides much of it.")
    return out


def cost_figure(side: SideBySide, floor, cores: int):
    """Figure 09_http_cost: TPOT round by round on both paths against the decode-step floor, and the CPU cores
    busy during a replay (the engine's process; over HTTP the server's and, stacked on it, the client's)."""
    import matplotlib.pyplot as plt

    v = side.rounds.values
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for who, marker in ((IN, "o-"), (HTTP, "s-")):
        axes[0].plot(range(1, len(v[who]["tpot_median_ms"]) + 1), v[who]["tpot_median_ms"], marker, label=who)
    shown = min(f.floor_s for f in floor_fractions(side, floor, "fp32"))  # re-derived where a path beat it
    axes[0].axhline(shown * 1e3, ls="--", c="gray", label="decode-step floor" + (" (re-derived: the profile's was "
                                                                                  "beaten)" if shown < floor.seconds
                                                                                  else ""))
    axes[0].set(xlabel="round", ylabel="TPOT median (ms)", title="Time per output token, round by round",
                ylim=(0, None))
    busy = [side.median(IN, "cpu_cores"), side.median(HTTP, "cpu_cores")]
    axes[1].bar([IN, HTTP], busy, label="engine's process (the server over HTTP)")
    axes[1].bar([HTTP], [side.median(HTTP, "client_cpu_cores")], bottom=[busy[1]], label="HTTP client")
    axes[1].axhline(cores, ls="--", c="gray", label=f"{cores} cores")
    axes[1].set(ylabel="CPU cores busy (median of rounds)", title="How busy the machine was during a replay")
    for a in axes:
        a.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------- the learner's own server

def your_server(url: str, model: str, trace: Sequence[Request], timeout_s: float = 60.0, tokenizer=None,
                slo_ms: dict | None = None, progress: bool = True) -> dict:
    """The trace replayed against the server at `url` (vLLM, llama.cpp's server, Ollama, TGI ...): a row with its
    summary and how many requests failed, or status "skipped: <reason>" when `url` is empty or nobody answers.
    With a `tokenizer`, prompts go as text; otherwise as token-id lists."""
    if not url:
        return {"server": "your server", "status": "skipped: url is empty (pass -p url=http://HOST:PORT, the base "
                                                  "URL of an OpenAI-compatible server, to measure yours)"}
    try:
        info = bench_http.probe(url, model or None, timeout_s, prompt="Hello" if tokenizer is not None else None)
    except (bench_http.ServerUnreachable, ValueError) as e:
        return {"server": url, "status": f"skipped: {e}"}
    top = max((t for r in trace for t in r.prompt_ids), default=0)
    if tokenizer is None and info["vocab_size"] is not None and top >= info["vocab_size"]:
        return {"server": url, "status": f"skipped: {info['model']!r} takes token ids below {info['vocab_size']} and "
                                          f"the trace's prompts use ids up to {top}; send text (url_text=True)"}
    replay = bench_http.run(info["url"], info["model"], trace, tokenizer=tokenizer, extra=info["extra"],
                            timeout_s=timeout_s, progress=progress)
    s = replay.summary(slo_ms=slo_ms)
    status = "ok" if not s["failed"] else ("failed" if not s["completed"] else f"ok, {s['failed']} failed")
    return {"server": f"{info['model']} at {info['url']}", "status": status, **s,
            "note": " ".join(x for x in (info["note"], replay.describe()) if x)}
