"""Notebook 05's servers: one trace replayed against every server, metrics side by side.

`compare_servers` runs the servers one after another on the same trace (same prompts, arrivals, output
lengths), in rotating rounds when asked, summarizes each with labkit.core.bench (vLLM's metrics), checks that each
server produced the same greedy tokens as the sequential `generate` baseline, and gives throughput ratios
against the other servers; `prefill_bound` and `decode_step_s` say how far batching could go on this trace, and
`occupancy` what the engine's batch did over time.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from labkit.core.bench import Ratio, summarize
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


def engine_ratio(rows: list[dict], other: str) -> Ratio | None:
    """The engine's output throughput against `other`'s, from `compare_servers` rows: the ratio within each round
    (their median is the value; > 1: the engine served more), or None where either did not run."""
    ok = {r["server"]: r for r in rows if r.get("status") == "ok"}
    if "engine" not in ok or other not in ok:
        return None
    return Ratio([e / o for e, o in zip(ok["engine"]["throughput_rounds"], ok[other]["throughput_rounds"],
                                        strict=True)])


def versus_lines(rows: list[dict], trace: str, others: Sequence[str] = ("static", "hf-continuous")) -> list[str]:
    """The engine's output throughput against each of `others` in words, from the per-round throughputs of
    `compare_servers` (ratios within a round, their median; a ratio inside the noise floor, or rounds that
    disagree, is called inconclusive), saying how many rounds it rests on."""
    out = []
    for other in others:
        ratio = engine_ratio(rows, other)
        if ratio is None:
            continue
        n = len(ratio.values)
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
    as alone (its matmuls are already wide). With decode made free the speed-up is at most busy time /
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

