"""What pays most on this machine ("best here"), measured beside the guide's stack on the same trace. The guide's
stack is built for int8/bf16 matrix units; on a CPU without them (AVX2 and FMA only: many laptops, desktops and
cloud machines) its INT8 and bf16 stages have no fast kernels, and the learner should leave with the configuration
that does pay there, not only the guide's. `best_here_wanted` says whether to measure it (auto: where the machine
has neither kind of unit, so the ci course's time grows only where it is needed), `best_candidates` builds the
configurations that should pay without matrix units (weight-only INT8/INT4: a decode step reads fewer bytes while
the matmuls stay in fp32/bf16; and plain fp32: whether quantizing pays at all), each served by labkit's engine
with SDPA, `measure(..., candidates=)` times them in the stack's own rounds, and `compare_best` picks the fastest
by measured throughput and sets it beside the stack's final stage with its roofline ceiling and perplexity change
(prose.best_here_line says it in words).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from labkit.core.bench import NOISE_FLOOR, Ratio
from labkit.lessons.casestudy.check import PPL_TOLERANCE_PCT
from labkit.lessons.casestudy.stages import Stage, final_stage, stage_model
from labkit.techniques import quant

# (method, dtype of what it leaves alone) for each candidate, engine + SDPA: weight-only INT8 on fp32 activations,
# torchao's packed INT4 (its CPU kernel needs a bf16 model), and no quantization at all.
BEST_CANDIDATES = (("int8-weight-only", "fp32"), ("int4-rtn", "bf16"), (None, "fp32"))
PREFIX = "best here: "  # every candidate's stage name starts with it


def best_here_wanted(best_here: bool | None, device: str, matrix_units: dict,
                     preset: str = "full") -> tuple[bool, str]:
    """Whether notebook 07 measures the best-here candidates, and a sentence saying why. None (auto): only on a
    CPU with neither int8 nor bf16 matrix units (hardware.matrix_units), where the guide's stack has nothing to
    run on, and not in the ci preset: there they would replay the trace len(BEST_CANDIDATES) more times per round
    on the slowest machines the course meets (issue 29: 565 of the 820 s notebook 07 took on an AVX2-only EPYC
    went to the replays with them), so the ci run prints what they would cost (`cost_line`) instead; True/False
    force it."""
    from labkit.core.params import check

    if best_here is not None:
        check("best_here", best_here, bool)
        return best_here, ("measured after the guide's stack (best_here=True)" if best_here else
                           "not measured (best_here=False)")
    if str(device).startswith("cuda"):
        return False, ("not measured: a CUDA GPU has the int8 and bf16 matrix units the guide's stack is built for "
                       "(-p best_here=true measures the alternatives anyway)")
    has = [k for k in ("int8", "bf16") if matrix_units.get(k)]
    if has:
        return False, (f"not measured: this CPU has {' and '.join(has)} matrix units, the hardware the guide's stack "
                       "is built for (-p best_here=true measures the alternatives anyway)")
    if preset == "ci":
        return False, ("not measured in the ci preset: this CPU has no int8 or bf16 matrix units, so the guide's "
                       "stack has no fast kernels here, but measuring the alternatives replays the whole trace "
                       f"{len(BEST_CANDIDATES)} more times per round (their cost here is printed below the stages); "
                       "-p best_here=true or --preset full measures them")
    return True, ("measured after the guide's stack: this CPU has no int8 or bf16 matrix units (no "
                  "AVX512-VNNI/AVX-VNNI/AMX, no AVX512-BF16), so the guide's INT8 and bf16 stages have no fast "
                  "kernels here; weight-only configurations, which read fewer bytes per decode step and multiply in "
                  "fp32/bf16, are timed in the same rounds on the same trace")


def candidate_name(method: str | None, dtype: str) -> str:
    """A candidate's stage name: 'best here: int8-weight-only fp32', 'best here: fp32 (no quantization)'."""
    return PREFIX + (f"{method} {dtype}" if method else f"{dtype} (no quantization)")


def config(row) -> str:
    """What a stage (a Stage or a row) runs, in words: its weights and activations, its server and attention."""
    get = row.get if isinstance(row, dict) else (lambda k, d=None: getattr(row, k, d))
    method, dtype = get("int8"), get("dtype", "fp32")
    numbers = (f"{method} (int8 weights and activations)" if method in quant.COMPUTE_DTYPE else
               f"{method} weights, {dtype} activations" if method else f"{dtype} weights and activations")
    server = "continuous batching" if get("server") == "engine" else "one at a time"
    return f"{numbers}; {server}, {'SDPA' if get('attention') == 'sdpa' else 'eager'} attention"


def best_candidates(stages: Sequence[Stage], base, cache: dict, device: str = "cpu",
               methods: Sequence[tuple[str | None, str]] = BEST_CANDIDATES) -> tuple[list[Stage], list[dict]]:
    """The best-here stages to measure beside `stages` (the guide's stack), each one's speed model built now into
    `cache` (the one `measure` takes), and a row for each left out, saying why: the same configuration as a stage
    of the stack (measured there), or a method this machine cannot run (labkit.techniques.quant's reason)."""
    dev = str(device).split(":")[0]
    same = {(s.int8, s.server, s.attention, s.dtype): s.name for s in stages}
    out, skipped = [], []
    for method, dtype in methods:
        stage = Stage(candidate_name(method, dtype), int8=method, server="engine", attention="sdpa", dtype=dtype)
        twin = same.get((method, "engine", "sdpa", dtype))
        if twin:
            skipped.append({"stage": stage.name, "status": f"measured as the stack's '{twin}'"})
            continue
        reason = method and quant.unsupported(method, dev, torch.bfloat16 if dtype == "bf16" else torch.float32)
        if not reason:
            try:
                stage_model(stage, base, cache)
            except quant.QuantSkipped as e:
                reason = str(e)
        if reason:
            skipped.append({"stage": stage.name, "status": f"skipped: {reason}"})
        else:
            out.append(stage)
    return out, skipped


def split_best(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """`measure`'s rows parted into the stack's and the best-here candidates' (`best_here`)."""
    return [r for r in rows if not r.get("best_here")], [r for r in rows if r.get("best_here")]


_SHOWN = ("ttft_idle_ms", "tpot_p50_ms", "weight_bytes")
_PROJECTED = ("throughput_ceiling", "fraction_of_ceiling", "output_throughput_full", "throughput_ceiling_full")


def compare_best(rows: list[dict], proj: list[dict], ppl_rows: list[dict], best_rows: list[dict],
            best_proj: list[dict], best_ppl: list[dict], skipped: Sequence[dict] = (),
            noise: float = NOISE_FLOOR) -> dict:
    """The stack's final stage (`rows`, `proj`, `ppl_rows`: the stack's measurements, projection and perplexity)
    beside the best-here candidates (theirs), one joined row each, the stack's first: throughput and its factor
    over the final stage (median of per-round ratios), idle TTFT, TPOT, weight bytes, the roofline ceiling for the
    trace and the fraction reached, the projection to full depth, the perplexity change against the fp32 baseline.

    `fastest`: the candidate with the highest measured throughput; `verdict`: "candidate" where it beats the
    stack beyond the noise (bench.Ratio.conclusive: beyond `noise` and most rounds agree), "stack" where the stack
    is faster beyond it, "inconclusive" inside it, "none" where no candidate ran; `pick`: what to run here (the
    candidate where it won, else the stack's final stage); `fastest_within_ppl`: the fastest of all (stack
    included) whose perplexity stays within PPL_TOLERANCE_PCT, when that is not `fastest`."""
    final = final_stage(rows)
    p = {r["stage"]: r for r in [*proj, *best_proj]}
    q = {r["stage"]: r for r in [*ppl_rows, *best_ppl]}

    def joined(r: dict, stack: bool) -> dict:
        n = len(best_rows[0]["throughput_x_prev_rounds"]) if best_rows else 1
        out = {"stage": r["stage"], "status": "ok", "stack": stack, "config": config(r),
               "output_throughput": r["output_throughput"],
               "throughput_x_stack": 1.0 if stack else r["throughput_x_prev"],
               "throughput_x_stack_rounds": [1.0] * n if stack else list(r["throughput_x_prev_rounds"]),
               **{k: r.get(k) for k in _SHOWN}, **{k: p.get(r["stage"], {}).get(k) for k in _PROJECTED}}
        out.update({k: q.get(r["stage"], {}).get(k) for k in ("perplexity", "ppl_delta_pct")})
        return out

    table = [joined(final, True)] + [joined(r, False) for r in best_rows] + [dict(s) for s in skipped]
    ok = [t for t in table[1:] if t["status"] == "ok"]
    out = {"stack_stage": final["stage"], "rows": table, "ppl_tolerance_pct": PPL_TOLERANCE_PCT,
           "fastest": None, "verdict": "none", "pick": final["stage"], "x_stack": None, "fastest_within_ppl": None}
    if not ok:
        return out
    fastest = max(ok, key=lambda t: t["output_throughput"])
    ratio = Ratio(fastest["throughput_x_stack_rounds"], noise)
    verdict = "inconclusive" if not ratio.conclusive else "candidate" if ratio.value > 1 else "stack"
    within = [t for t in [table[0], *ok] if t["ppl_delta_pct"] is not None
              and abs(t["ppl_delta_pct"]) <= PPL_TOLERANCE_PCT]
    safe = max(within, key=lambda t: t["output_throughput"]) if within else None
    out.update({"fastest": fastest["stage"], "verdict": verdict, "x_stack": ratio.to_dict(),
                "pick": fastest["stage"] if verdict == "candidate" else final["stage"],
                "fastest_within_ppl": safe["stage"] if safe and safe is not fastest else None})
    for t in table:
        t["picked"] = t["stage"] == out["pick"]
    return out


def cost_line(rows: list[dict], trace_tokens: int, rounds: int) -> str:
    """What measuring the best-here candidates would add to this run, from its own numbers: each candidate replays
    the trace (`trace_tokens` output tokens) once per round, estimated at the baseline's measured throughput (the
    candidates multiply in fp32/bf16 like it; measured on an AVX2-only EPYC, that estimate came within 10% of what
    they took)."""
    base = next((r for r in rows if r.get("status", "ok") == "ok" and r.get("output_throughput")), None)
    if base is None:
        return "best here: not measured, and no stage was measured to estimate its cost from"
    per = trace_tokens / base["output_throughput"]
    n = len(BEST_CANDIDATES)
    return (f"best here: not measured; measuring it would replay the trace {n} x {rounds} more times, "
            f"~{n * rounds * per:.0f} s here ({per:.0f} s per replay at {base['stage']}'s "
            f"{base['output_throughput']:.1f} tok/s); -p best_here=true measures it")
