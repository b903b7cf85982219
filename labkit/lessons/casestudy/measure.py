"""Measuring the stages side by side in one run: `measure` times every stage's idle TTFT and its replay of the
trace in rotating rounds (and, in the same rounds, one prefill-shaped matmul per compute type, so the machine's
matmul rates while the stages ran are known); `in_run_card` and `kernel_ratio` turn those in-run rates into the
roofline card and the idle-TTFT ceiling the check uses.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict

import torch

from labkit.core import hardware, models, roofline
from labkit.core.bench import summarize
from labkit.lessons.casestudy.stages import Server, Stage, compute_dtype, final_stage, stage_model
from labkit.serve.workload import Request


def measure(stages: Sequence[Stage], base, trace: Sequence[Request], max_batch: int, idle_repeats: int = 3,
            rounds: int = 3, progress: bool = True, cache: dict | None = None, kernels: bool = True,
            candidates: Sequence[Stage] = (), deadline: float | None = None) -> tuple[list[dict], dict, dict, dict]:
    """Every stage on the same trace, in one run, in rotating rounds (labkit.core.bench.run_rounds) so that drift
    in the machine's load hits every stage alike. Idle TTFT: the first request of each stage is the cold start
    (kept apart), then `idle_repeats` rounds each time one 512-token request on every idle server in turn.
    Then `rounds` rounds in which every stage replays the whole trace, one stage after another, the order
    rotating each round. Every factor is the median over rounds of the ratio measured within a round.

    With `kernels`, the idle-TTFT rounds also time one prefill-shaped matmul (prompt tokens x hidden, times an
    intermediate x hidden weight; hardware.matrix_kernel, the fastest of 3 calls) in each stage's compute type,
    through the kernel its INT8 method calls, in the same rotation, so the machine's matmul rates at that moment
    are known (`raw["kernels"]`, used by `ceilings`): on a shared machine they can move several-fold within
    minutes, and not alike for every kernel.

    Returns (rows, replays of the last round by stage name, models by stage name, the raw rounds); rows carry
    the factors against the stage before (`*_x_prev`) and against the baseline (`*_x_base`). `cache`: models
    already quantized by (method, dtype), e.g. from `pick_int8(..., keep=)`.

    `candidates`: best-here stages (labkit.lessons.casestudy.best) measured in the same idle and replay rounds as
    `stages`, their rows after the stack's, marked `best_here` and `vs` the stack's final stage: their `*_x_prev`
    factors (and the per-round `throughput_x_prev_rounds`) are against that final stage, not the row before.

    `deadline` (a time.perf_counter() value, from the lesson's budget: `replay_deadline`): a replay round that would
    end past it is not started (at least one runs); raw["replay"] then says how many were asked (`rounds_line`)."""
    from labkit.core.bench import run_rounds

    cache = {} if cache is None else cache
    everything = [*stages, *candidates]
    if len({s.name for s in everything}) < len(everything):
        raise ValueError(f"stage names must differ: {[s.name for s in everything]}")
    servers = {s.name: Server(s, stage_model(s, base, cache), trace, max_batch) for s in everything}
    prompt = list(trace[0].prompt_ids)
    replays: dict = {}

    def idle(srv: Server):
        return lambda: {"ttft": srv.idle_ttft(prompt)}

    def replay(srv: Server):
        def run() -> dict:
            replays[srv.stage.name] = srv.replay(trace)
            m = summarize(replays[srv.stage.name][0])
            return {"throughput": m["output_throughput"], "ttft_p50": m["ttft_median_ms"] / 1e3,
                    "ttft_p99": m["ttft_p99_ms"] / 1e3, "tpot_p50": m["tpot_median_ms"] / 1e3,
                    "failed": m["failed"]}
        return run

    idle_calls = {n: idle(srv) for n, srv in servers.items()}
    probes = {}
    if kernels:
        cfg, dev = base.config, str(next(base.parameters()).device)
        methods = {}  # compute type -> the INT8 method of the first stage computing in it (its kernel is timed)
        for st in everything:
            methods.setdefault(compute_dtype(st), st.int8)
        for dt, method in methods.items():
            call, flops, kernel = hardware.matrix_kernel(dt, len(prompt), cfg.hidden_size, cfg.intermediate_size,
                                                         dev, method=method)
            probes[dt] = {"kernel": kernel, "flops": flops,
                          "shape": f"{len(prompt)}x{cfg.hidden_size} @ ({cfg.intermediate_size}x{cfg.hidden_size})^T"}
            idle_calls[f"matmul {dt}"] = call
    with torch.inference_mode():
        idle_r = run_rounds(idle_calls, idle_repeats, progress=progress, desc="idle TTFT rounds")
        replay_r = run_rounds({n: replay(srv) for n, srv in servers.items()}, rounds, cold=False,
                              progress=progress, desc="trace replay rounds", deadline=deadline)
    rows = [_stage_row(s, servers[s.name], idle_r, replay_r, stages[0].name, stages[i - 1].name if i else None)
            for i, s in enumerate(stages)]
    final = final_stage(rows)["stage"]
    for s in candidates:
        row = _stage_row(s, servers[s.name], idle_r, replay_r, stages[0].name, final)
        row.update({"best_here": True, "vs": final, "guide_factor": None,
                    "throughput_x_prev_rounds": replay_r.ratio(final, s.name, "throughput",
                                                               higher_is_better=True).values})
        rows.append(row)
    raw = {"idle": idle_r.to_dict(), "replay": replay_r.to_dict(),
           "kernels": {dt: {**p, "s": idle_r.values[f"matmul {dt}"]["kernel_s"]} for dt, p in probes.items()}}
    return rows, replays, {n: srv.model for n, srv in servers.items()}, raw


def _stage_row(s: Stage, srv: Server, idle_r, replay_r, base: str, prev: str | None) -> dict:
    n = s.name
    row = {"stage": n, "status": "ok", **{k: v for k, v in asdict(s).items() if k != "name"},
           "ttft_idle_ms": idle_r.median(n, "ttft") * 1e3, "ttft_cold_ms": idle_r.cold[n]["ttft"] * 1e3,
           "ttft_p50_ms": replay_r.median(n, "ttft_p50") * 1e3, "ttft_p99_ms": replay_r.median(n, "ttft_p99") * 1e3,
           "tpot_p50_ms": replay_r.median(n, "tpot_p50") * 1e3, "output_throughput": replay_r.median(n, "throughput"),
           "failed": int(max(replay_r.values[n]["failed"])), "weight_bytes": models.weight_bytes(srv.model)}
    for ref, tag in ((prev, "prev"), (base, "base")):
        if ref is None or (tag == "base" and ref == n):
            continue
        row[f"throughput_x_{tag}"] = replay_r.ratio(ref, n, "throughput", higher_is_better=True).value
        row[f"ttft_idle_x_{tag}"] = idle_r.ratio(ref, n, "ttft").value
        row[f"ttft_loaded_x_{tag}"] = replay_r.ratio(ref, n, "ttft_p50").value
    if n != base:
        row["throughput_x_base_rounds"] = replay_r.ratio(base, n, "throughput", higher_is_better=True).values
    row["guide_factor"] = s.guide_factor
    return row


def in_run_card(hw: roofline.Card, kernels: dict | None) -> tuple[roofline.Card, list[str]]:
    """`hw` (notebook 01's card) with the matmul rates of the number types timed in this run's idle rounds
    (`measure`, raw["kernels"]: the prefill's own shape, next to the stages) in place of the profile's, and a line
    per type saying what changed. The floors and ceilings of `project` then use the machine as it was while the
    stages ran: a rate measured minutes earlier, at another shape, can put a stage above its own floor."""
    from dataclasses import replace

    if not kernels:
        return hw, ["no matmuls timed in this run: floors from " + (hw.source or "the card")]
    peaks, lines = dict(hw.peak_tflops), []
    for dt, k in kernels.items():
        rate = matmul_tflops(k)
        old = hw.peak(dt)
        lines.append(f"{dt} matmul ({k['kernel']}, {k['shape']}): {rate:.2f} TFLOP/s in this run's rounds"
                     + (f", {old / 1e12:.2f} in notebook 01's profile" if old else ""))
        peaks[dt] = rate
    return replace(hw, peak_tflops=peaks, source=f"{hw.source}; matmul rates timed in this run"), lines


def matmul_tflops(kernel: dict) -> float:
    """A matmul timed in `measure`'s rounds (raw["kernels"][dtype]): its rate, median over rounds, in TFLOP/s."""
    return kernel["flops"] / statistics.median(kernel["s"]) / 1e12


def kernel_ratio(rows: list[dict], kernels: dict | None) -> float | None:
    """The final stage's matmul rate over the baseline's, timed in the same rounds as their idle TTFTs (`measure`,
    raw["kernels"]): the median over rounds of the per-round ratio. None when not timed."""
    if not kernels:
        return None
    fd, bd = compute_dtype(final_stage(rows)), compute_dtype(rows[0])
    if fd not in kernels or bd not in kernels:
        return None
    per = [b / f for b, f in zip(kernels[bd]["s"], kernels[fd]["s"], strict=True)]
    return float(statistics.median(per))


AFTER_REPLAYS_S = 45.0  # what notebook 07 does after the replays (perplexities, tables, figures): ~40 s measured


def replay_deadline(budget_s: float | None, started: float) -> float | None:
    """The time.perf_counter() by which the replay rounds of notebook 07, started at `started`, must end for it to fit
    `budget_s` (AFTER_REPLAYS_S left for the cells after them). None: no budget."""
    return None if budget_s is None else started + budget_s - AFTER_REPLAYS_S


def rounds_done(raw: dict) -> int:
    """How many replay rounds `measure` ran (its raw["replay"]): fewer than asked when the budget cut them."""
    r = raw["replay"]
    return len(next(iter(r["values"][r["names"][0]].values())))


def rounds_line(raw: dict, budget_s: float | None) -> str | None:
    """A sentence when the budget cut the replay rounds (`measure`'s raw["replay"]): how many ran of how many, what a
    round took here, and the budget that runs them all. None when every round ran."""
    from labkit.core.budget import suggest_budget

    r, done = raw["replay"], rounds_done(raw)
    if r.get("asked", done) <= done:
        return None
    more = suggest_budget((budget_s or 0.0) + (r["asked"] - done) * r["round_s"])
    each = ("each factor is then one round's, its spread unknown" if done == 1 else
            f"each factor is then the median of {done} rounds")
    return (f"trace replayed in {done} of {r['asked']} rounds to fit -p budget_s={budget_s:.0f} (a round of every "
            f"stage took ~{r['round_s']:.0f} s here): {each}; run with -p budget_s={more} for all of them")
