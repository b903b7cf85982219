"""Notebook 05's experiment: one trace replayed against every server, metrics side by side.

`compare_servers` runs the servers one after another on the same trace (same prompts, arrivals, output
lengths), in rotating rounds when asked, summarizes each with labkit.core.bench (vLLM's metrics), checks that each
server produced the same greedy tokens as the sequential `generate` baseline, and gives throughput ratios
against the other servers.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Sequence

from labkit.core.bench import summarize
from labkit.serve.baselines import Unavailable, run_engine, run_hf_continuous, run_sequential, run_static
from labkit.serve.engine import LLMEngine
from labkit.serve.sequence import SamplingParams
from labkit.serve.workload import Request

SERVERS = ("sequential", "static", "engine", "hf-continuous")


def engine_for(model, trace: Sequence[Request], max_num_seqs: int, **config) -> LLMEngine:
    """An engine sized for the trace: context = longest prompt + output; every other option (`config`: the
    fields of labkit.serve.EngineConfig, e.g. `max_num_batched_tokens`, `attention`) as given or its default."""
    longest = max(r.prompt_len + r.output_len for r in trace)
    return LLMEngine.from_model(model, max_num_seqs=max_num_seqs, max_model_len=longest, **config)


def served_perplexity(engine: LLMEngine, ids, window: int = 512, stride: int = 256, decode_tokens: int = 16) -> dict:
    """Held-out perplexity as `engine` serves: every strided window of `ids` (quality.windows, the same windows
    and scored tokens as quality.perplexity) is one request asking for its prompt log-probabilities, all queued
    at once, so each window is computed in the engine's batches exactly as a prompt would be served: its prefill
    chunks share steps with the windows before it, which go on to generate `decode_tokens` tokens each (greedy,
    not scored) as the requests of a trace do. Where a server's numerics depend on the batch (per-tensor int8
    activations), this differs from the one-at-a-time perplexity; where they do not, it matches it up to
    rounding."""
    import torch

    from labkit.core import quality

    ids = [int(t) for t in ids]
    plan = quality.windows(len(ids), window, stride)
    params = SamplingParams(max_tokens=decode_tokens, ignore_eos=True, prompt_logprobs=True)
    sids = [engine.add_request(ids[b:e], params) for b, e, _ in plan]
    while engine.has_unfinished():
        engine.step()
    nll = []
    for sid, (b, e, first) in zip(sids, plan, strict=True):
        seq = engine.get(sid)
        if seq.finish_reason not in ("length", "stop") or seq.prompt_logprobs is None:
            raise RuntimeError(f"window [{b}, {e}) was not served: {seq.finish_reason}")
        lps = seq.prompt_logprobs[first - b:]
        if any(lp is None for lp in lps):
            raise RuntimeError(f"window [{b}, {e}) has prompt tokens without log-probabilities (prefix cache?)")
        nll.extend(-lp for lp in lps)
    return quality.from_nll(torch.tensor(nll, dtype=torch.float64), window, stride)


def compare_servers(model, trace: Sequence[Request], servers: Sequence[str] = SERVERS, max_batch: int = 8,
                    max_wait_s: float = 1.0, slo_ms: dict | None = None, progress: bool = True,
                    max_num_batched_tokens: int | None = None, rounds: int = 1):
    """Replay `trace` against each server; returns (table rows, replays by server, the engine used).

    `max_batch` is the static batch size and the engine's max running sequences, so both are compared at the same
    maximum batch; `max_num_batched_tokens` is the engine's token budget per step (prompts longer than it are
    prefilled in chunks, decodes first; None: EngineConfig's default). With `rounds` > 1 every server replays the
    trace once per round, the order rotating each round (labkit.core.bench.run_rounds), so that a change in the
    machine's load hits every server alike: a row is the server's median-throughput round, `throughput_rounds` lists
    every round, and each `throughput_x_vs_*` is the median over rounds of the ratio measured within a round. With
    one round (the default) load drift between the replays can decide a close ranking. Rows carry status "ok" or
    "skipped: <reason>" (never another server's numbers). The engine's step stats (`occupancy`) are its last
    replay's."""
    from labkit.core.bench import run_rounds

    unknown = sorted(set(servers) - set(SERVERS))
    if unknown:
        raise ValueError(f"unknown servers {unknown}; choose from {list(SERVERS)}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    engine = engine_for(model, trace, max_batch, max_num_batched_tokens=max_num_batched_tokens)
    runs = {
        "sequential": lambda: run_sequential(model, trace),
        "static": lambda: run_static(model, trace, batch_size=max_batch, max_wait_s=max_wait_s),
        "engine": lambda: run_engine(engine, trace),
        "hf-continuous": lambda: run_hf_continuous(model, trace, max_requests_per_batch=max_batch),
    }
    done: dict[str, list] = {name: [] for name in servers}
    skipped: dict[str, str] = {}

    def replay(name: str):
        def run() -> dict:
            if name in skipped:
                return {}
            if name == "engine":
                engine.stats.clear()
            try:
                done[name].append(runs[name]())
            except Unavailable as e:
                skipped[name] = str(e)
                return {}
            return {"throughput": summarize(done[name][-1][0])["output_throughput"]}
        return run

    timed = run_rounds({name: replay(name) for name in servers}, rounds, cold=False, progress=progress,
                       desc="server rounds" if rounds > 1 else "servers")
    replays, rows = {}, []
    for name in servers:
        if name in skipped:
            rows.append({"server": name, "status": f"skipped: {skipped[name]}"})
            continue
        tput = timed.values[name]["throughput"]
        pick = sorted(range(len(tput)), key=tput.__getitem__)[(len(tput) - 1) // 2]  # the median round
        replays[name] = done[name][pick]
        rows.append({"server": name, "status": "ok", **summarize(replays[name][0], slo_ms=slo_ms),
                     "rounds": len(tput), "throughput_rounds": tput})
    ref = replays.get("sequential")
    for row in rows:
        if row["status"] == "ok" and ref is not None:
            outs = replays[row["server"]][1]
            row["same_tokens_as_sequential"] = sum(a == b for a, b in zip(outs, ref[1], strict=True)) / len(outs)
    ok = {r["server"]: r for r in rows if r["status"] == "ok"}
    if "sequential" in ok:
        step = decode_step_s(engine, max_batch) if "engine" in ok else None
        ok["sequential"].update(prefill_bound(replays["sequential"][0], step, max_batch))
    for row in ok.values():
        for other in ("sequential", "static", "hf-continuous"):
            if other in ok and other != row["server"]:
                row[f"throughput_x_vs_{other}"] = timed.ratio(other, row["server"], "throughput",
                                                              higher_is_better=True).value
    return rows, replays, engine


def versus_lines(rows: list[dict], trace: str, others: Sequence[str] = ("static", "hf-continuous")) -> list[str]:
    """The engine's output throughput against each of `others` in words, from the per-round throughputs of
    `compare_servers` (ratios within a round, their median; a ratio inside the noise floor, or rounds that
    disagree, is called inconclusive), saying how many rounds it rests on."""
    from labkit.core.bench import Ratio

    ok = {r["server"]: r for r in rows if r.get("status") == "ok"}
    if "engine" not in ok:
        return []
    eng = ok["engine"]["throughput_rounds"]
    out = []
    for other in others:
        if other not in ok:
            continue
        ratio = Ratio([e / o for e, o in zip(eng, ok[other]["throughput_rounds"], strict=True)])
        n = len(eng)
        if n == 1:
            rounds = "one replay each"
        elif ratio.conclusive:
            rounds = f"median of {n} rotating rounds, {min(ratio.values):.2f}-{max(ratio.values):.2f}x"
        else:  # the words already give the rounds' range
            rounds = f"{n} rotating rounds"
        out.append(f"{trace}: the engine's output throughput against {other}: "
                   f"{ratio.words('higher', 'lower')} ({rounds})")
    return out


def prefill_bound(timings, decode_step_s: float | None = None, batch: int | None = None) -> dict:
    """How much faster than one-at-a-time serving batching could make this trace, from the sequential replay:
    batching shares a decode step's weight reads between requests, but a prefill is as much work in a batch
    as alone (on a CPU it is compute-bound). With decode made free the speed-up is at most busy time /
    prefill time (Amdahl's law): `max_x_vs_sequential`. Given the measured time of a decode step at a full
    batch of `batch` sequences, `max_x_at_batch` is the bound when every decode step is that full."""
    done = [t for t in timings if t.service_start is not None and t.token_times]
    if not done:
        return {}  # this server does not record when it started on a request
    busy = sum(t.token_times[-1] - t.service_start for t in done)
    prefill = sum(t.token_times[0] - t.service_start for t in done)
    out = {"prefill_share": prefill / busy, "max_x_vs_sequential": busy / prefill}
    if decode_step_s and batch:
        steps = sum(t.output_tokens - 1 for t in done) / batch
        out["max_x_at_batch"] = busy / (prefill + steps * decode_step_s)
    return out


def decode_step_s(engine: LLMEngine, batch: int) -> float | None:
    """Median time of the engine's pure decode steps with `batch` running sequences (from its step stats;
    a step's time is the gap since the step before, so only back-to-back steps count)."""
    st = engine.stats
    gaps = [b.time - a.time for a, b in zip(st, st[1:], strict=False)
            if not b.is_prefill and b.num_seqs == batch and b.num_tokens == batch
            and not a.is_prefill and a.num_seqs >= batch]
    return statistics.median(gaps) if gaps else None


def occupancy(engine: LLMEngine) -> dict[str, list]:
    """The engine's batch over time for one run: seconds since its first step, running sequences, tokens
    computed, waiting requests, and whether the step was a prefill."""
    if not engine.stats:
        return {"t": [], "seqs": [], "tokens": [], "waiting": [], "prefill": []}
    t0 = engine.stats[0].time
    return {"t": [s.time - t0 for s in engine.stats], "seqs": [s.num_seqs for s in engine.stats],
            "tokens": [s.num_tokens for s in engine.stats], "waiting": [s.num_waiting for s in engine.stats],
            "prefill": [s.is_prefill for s in engine.stats]}


def rate_sweep(model, rates: Sequence[float], n: int, prompt_len: int | tuple[int, int],
               output_len: int | tuple[int, int], servers: Sequence[str] = ("static", "engine"), max_batch: int = 8,
               slo_ms: dict | None = None, seed: int = 0, progress: bool = True,
               max_num_batched_tokens: int | None = None, rounds: int = 1) -> list[dict]:
    """The same kind of Poisson trace at each rate, replayed against `servers`: one row per (rate, server),
    for throughput and latency percentiles against the offered load."""
    from labkit.core.progress import tqdm
    from labkit.serve.workload import make_trace

    out = []
    for rate in tqdm(list(rates), desc="rates", disable=not progress):
        trace = make_trace(n, prompt_len=prompt_len, output_len=output_len, arrival="poisson", rate=rate,
                           vocab_size=model.config.vocab_size, seed=seed)
        rows, _, _ = compare_servers(model, trace, servers, max_batch=max_batch, slo_ms=slo_ms, progress=False,
                                     max_num_batched_tokens=max_num_batched_tokens, rounds=rounds)
        out += [{"rate": rate, **r} for r in rows]
    return out


def bound_sentence(rows: list[dict]) -> str | None:
    """The engine against one-at-a-time serving, in words from the rows, with the bound the sequential replay
    puts on any batching (`prefill_bound`): the continuous-batching factor the case study (07) stacks."""
    ok = {r["server"]: r for r in rows if r.get("status") == "ok"}
    if "engine" not in ok or "sequential" not in ok:
        return None
    s = ok["sequential"]
    text = (f"The engine serves {ok['engine']['output_throughput'] / s['output_throughput']:.2f}x the output "
            f"throughput of sequential generate (the guide's continuous-batching factor: 1.8x)")
    if s.get("prefill_share"):
        text += (f"; prefills are {s['prefill_share']:.0%} of sequential's busy time and batching does not make them "
                 f"cheaper, so even free decode would give at most {s['max_x_vs_sequential']:.1f}x")
    if s.get("max_x_at_batch"):
        text += f", and every decode step at the full batch (at the step time measured) {s['max_x_at_batch']:.1f}x"
    return text + "."


STEP_PARTS = {"labkit::linears": "linear layers (with the MLP, norms, head)",
              "labkit::attention": "attention (KV gather + attend)", "labkit::kv_write": "KV cache writes",
              "labkit::sample": "sampling"}


def profile_decode_step(engine: LLMEngine, prompts: list[list[int]], steps: int = 4, hw=None) -> dict:
    """Where one decode step of a full batch goes: the engine gets `prompts` (one per running slot), runs until all
    are decoding, then `steps` steps under torch.profiler. Returns milliseconds per step for each part the runner
    marks (linear layers, attention, KV writes, sampling), the rest of the time inside the step's operators,
    and the Python and scheduling overhead around them (step wall time minus all operators); with `hw` (a
    roofline.Card), the step's compute floor (FLOPs of its tokens / the matmul rate of the model's dtype) and
    memory floor (weights and KV cache read once / bandwidth)."""
    import time

    from torch.profiler import ProfilerActivity, profile

    from labkit.serve.sequence import SamplingParams

    ids = [engine.add_request(p, SamplingParams(max_tokens=steps + 8, ignore_eos=True)) for p in prompts]
    sched = engine.scheduler
    while sched.num_waiting or any(s.num_tokens - s.num_cached_tokens > 1 for s in sched.running):
        engine.step()
    batch = sched.num_running
    ctx = sum(engine.get(i).num_tokens for i in ids) / len(ids)
    with _no_native_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            engine.step()
        wall = (time.perf_counter() - t0) / steps
    for i in ids:
        engine.cancel(i)
    events = prof.key_averages()
    part_ms = {label: sum(e.cpu_time_total for e in events if e.key == key) / 1e3 / steps
               for key, label in STEP_PARTS.items()}
    ops_ms = sum(e.self_cpu_time_total for e in events if not e.key.startswith("labkit::")) / 1e3 / steps
    out = {"batch": batch, "context": ctx, "step_ms": wall * 1e3, **part_ms,
           "other operators": max(0.0, ops_ms - sum(part_ms.values())),
           "python and scheduling": max(0.0, wall * 1e3 - ops_ms)}
    if hw is not None:
        out.update(step_floors(engine.model, batch, ctx, hw))
    return out


@contextlib.contextmanager
def _no_native_stderr():
    """The profiler's C++ side writes "USDT: ... profiler_start/stop" straight to file descriptor 2, which a
    notebook shows as output; silence that descriptor while it starts and stops (Python's stderr is untouched)."""
    import os

    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def step_floors(model, batch: int, context: float, hw) -> dict:
    """A decode step of `batch` sequences at `context` tokens: its compute floor (2 FLOPs per weight per token and
    the attention over the context, at the matmul rate of the model's dtype) and memory floor (every weight and
    each sequence's KV cache read once), in ms."""
    import torch

    from labkit.core.models import weight_bytes
    from labkit.core.roofline import decode_read_bytes, measured_parts
    from labkit.serve.runner import ModelRunner

    cfg = model.config
    emb = model.get_input_embeddings().weight
    dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(emb.dtype, "fp32")
    kv = ModelRunner.kv_bytes_per_block(model, 1) * context * batch  # bytes of K and V per token, all layers
    weights = decode_read_bytes(measured_parts(model))
    params = sum(p.numel() for p in model.parameters()) - emb.numel() * (0 if cfg.tie_word_embeddings else 1)
    flops = 2 * batch * params + 4 * batch * cfg.num_hidden_layers * cfg.hidden_size * context
    peak = hw.peak(dtype)
    return {"memory_floor_ms": (weights + kv) / (hw.bandwidth_gbps * 1e9) * 1e3,
            "compute_floor_ms": flops / peak * 1e3 if peak else None, "weight_mib": weight_bytes(model) / 2**20}


SERVER_VIEW = {"server": "server", "output_throughput": "output tok/s", "goodput": "goodput req/s",
               "ttft_median_ms": "TTFT p50 ms", "ttft_p99_ms": "TTFT p99 ms", "tpot_median_ms": "TPOT p50 ms",
               "itl_p99_ms": "ITL p99 ms", "e2e_std_ms": "E2E std ms", "failed": "failed",
               "same_tokens_as_sequential": "same tokens", "throughput_x_vs_static": "x static",
               "throughput_x_vs_hf-continuous": "x HF CB", "throughput_x_vs_sequential": "x sequential"}


def server_view(rows: list[dict]):
    """The servers that ran, with the key metrics under readable headers (units in them); the rest is in the
    record, and `skipped:` rows are listed apart with their reasons whole."""
    import pandas as pd

    ok = [r for r in rows if r.get("status") == "ok"]
    df = pd.DataFrame(ok).reindex(columns=list(SERVER_VIEW)).rename(columns=SERVER_VIEW)
    return df.dropna(axis=1, how="all")


def resolve_parameters(preset: str, *, device: str, dtype: str, seed: int, layers, n_requests, prompt_len: int,
                       output_len, rate, burstiness: float, max_batch: int, max_num_batched_tokens: int, servers,
                       slo_ttft_ms, slo_tpot_ms, rates, rounds) -> dict:
    """Notebook 05's parameters cell, checked at once (labkit.core.params): a bad value fails naming what is valid,
    and a size left None takes the preset's value. Returns the resolved values by name, `slo` as bench wants it."""
    from labkit.core.params import check, default, resolve_device

    check("dtype", dtype, str, choices=("fp32", "bf16", "fp16"))
    for name, value, lo in [("seed", seed, 0), ("prompt_len", prompt_len, 1), ("max_batch", max_batch, 1),
                            ("max_num_batched_tokens", max_num_batched_tokens, max_batch)]:
        check(name, value, int, min=lo)
    check("burstiness", burstiness, float, min=1e-3)
    return {
        "device": resolve_device(device),
        "layers": default("layers", layers, preset, ci=1, full=8, min=1),
        "n_requests": default("n_requests", n_requests, preset, ci=12, full=32, min=2),
        "output_len": tuple(default("output_len", output_len, preset, ci=(16, 96), full=(16, 256),
                                    kind=(list, tuple))),
        "rate": default("rate", rate, preset, ci=4.0, full=4.0, kind=float, min=1e-3),
        "servers": list(default("servers", servers, preset, ci=SERVERS, full=SERVERS, kind=(list, tuple),
                                choices=SERVERS)),
        "rounds": default("rounds", rounds, preset, ci=1, full=3, min=1),
        "rates": list(default("rates", rates, preset, ci=[1.0, 4.0], full=[0.5, 1.0, 2.0, 4.0, 8.0], kind=list)),
        "slo": {"ttft": check("slo_ttft_ms", slo_ttft_ms, float, min=0),
                "tpot": check("slo_tpot_ms", slo_tpot_ms, float, min=0)},
    }


def load_model(name: str, dtype: str, device: str, layers: int, seed: int, prepack: bool, max_batch: int):
    """The served model; with `prepack`, its fp32 linears on oneDNN's prepacked weights for `max_batch` rows
    (labkit.techniques.kernels raises with the reason where oneDNN cannot run it)."""
    from labkit.core import models
    from labkit.core.params import check
    from labkit.techniques import kernels

    m = models.load(name, dtype=dtype, device=device, layers=layers, seed=seed)
    return kernels.prepack_linears(m, rows_hint=max_batch) if check("prepack", prepack, bool) else m


STEP_SHOWN = (*STEP_PARTS.values(), "other operators", "python and scheduling")


def plot_step_profile(prof: dict, hw_source: str):
    """One decode step (`profile_decode_step`) as a stacked bar of its parts, with the memory and compute floors as
    vertical lines; the notebook shows it as "05_step_profile"."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    left = 0.0
    for name, ms in ((k, v) for k, v in prof.items() if k in STEP_SHOWN):
        ax.barh([0], [ms], left=left, label=f"{name}: {ms:.1f} ms")
        left += ms
    for floor, style in (("memory_floor_ms", "--"), ("compute_floor_ms", ":")):
        if prof.get(floor):
            ax.axvline(prof[floor], color="k", ls=style,
                       label=f"{floor.replace('_ms', '').replace('_', ' ')}: {prof[floor]:.1f} ms")
    ax.set(yticks=[], xlabel="ms per decode step",
           title=f"One decode step, batch {prof['batch']}, context {prof['context']:.0f} tokens ({hw_source})")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
    return fig


def step_profile_sentence(prof: dict) -> str:
    """The step against its floor (the larger of memory and compute) and its largest part, in words."""
    parts = {k: v for k, v in prof.items() if k in STEP_SHOWN}
    bound = max(("memory", prof["memory_floor_ms"]), ("compute", prof["compute_floor_ms"] or 0), key=lambda t: t[1])
    return (f"the step takes {prof['step_ms']:.1f} ms against a {bound[0]} floor of {bound[1]:.1f} ms "
            f"({bound[1] / prof['step_ms']:.0%} of it); the largest part is {max(parts, key=parts.get)}")
