"""The case study's verdict (claim C12's evidence): final stage against baseline on throughput, idle TTFT and
perplexity (`check`), each ratio asserted against the 4x TARGET only where this machine's roofline ceiling for
it (`ceilings`) leaves room to decide it by the stack rather than by the machine's load.
"""

from __future__ import annotations

from labkit.core.bench import NOISE_FLOOR
from labkit.lessons.casestudy.measure import kernel_ratio, matmul_tflops
from labkit.lessons.casestudy.prose import best_here_line
from labkit.lessons.casestudy.stages import GUIDE, compute_dtype, final_stage

TARGET = 4.0  # the bar: at least 4.0x on throughput and on idle TTFT (the guide reports ~4x on both)
PPL_TOLERANCE_PCT = 1.0

# A ratio is asserted only where this machine's ceiling for it is at least ASSERT_MARGIN x the bar. 2x, because
# the ceiling takes both stages at their floors, and an INT8 stage's prefill also quantizes its activations and
# rescales its outputs around every matmul, runs attention and the head, so it is assumed to reach at least half
# the fraction of its floor the fp32 baseline reaches. Measured on a Xeon with AMX against the matmul rates timed
# in the same rounds (`measure(kernels=True)`), three runs: final stage 0.53-0.93 of its idle-TTFT floor, the
# baseline 0.55-1.12 (pairs 0.68/1.12, 0.93/0.55, 0.53/0.82; the 1.12 from one kernel call per round, before
# the fastest of 3): the assumption held in all three, with little to spare in the first. The idle-TTFT ceiling
# is taken from those in-run rates: neighbours on a shared host slowed the oneDNN AMX int8 kernel 3x within
# minutes while fp32 slowed 1.3x, so notebook 01's profile, measured minutes earlier, could promise a ratio the
# machine no longer offered.
ASSERT_MARGIN = 2.0


def ceilings(rows: list[dict], proj: list[dict] | None, kernels: dict | None = None) -> dict[str, float]:
    """The most the final stage could gain over the baseline on this machine, by the roofline alone (both at their
    floors, so the answer is the hardware's and not the run's noise): for the idle TTFT, the baseline's prefill
    floor over the final stage's, in effect the ratio of their matmul rates: measured in the same rounds as the
    TTFTs where `kernels` (measure's raw["kernels"]) has them, else from notebook 01's profile; for throughput,
    the final stage's throughput ceiling for the trace over the baseline's (`project` gives the floors)."""
    out = {}
    final, base = final_stage(rows), rows[0]
    p = {r["stage"]: r for r in proj or []}
    fp, bp = p.get(final["stage"], {}), p.get(base["stage"], {})
    if fp.get("ttft_fraction_of_floor") and bp.get("ttft_fraction_of_floor"):
        out["ttft"] = (bp["ttft_fraction_of_floor"] * base["ttft_idle_ms"]) / (
            fp["ttft_fraction_of_floor"] * final["ttft_idle_ms"])
    in_run = kernel_ratio(rows, kernels)
    if in_run is not None:
        out["ttft"] = in_run
    if fp.get("throughput_ceiling") and bp.get("throughput_ceiling"):
        out["throughput"] = fp["throughput_ceiling"] / bp["throughput_ceiling"]
    return out


def check(rows: list[dict], ppl_rows: list[dict], matrix_units: dict, device: str,
          proj: list[dict] | None = None, kernels: dict | None = None, best: dict | None = None) -> dict:
    """Final stage vs baseline: throughput and idle-TTFT ratios (each the median over rounds of the ratio measured
    side by side within a round), the loaded-TTFT ratio, the perplexity change.

    A ratio is asserted against TARGET only where it can be decided by the stack rather than by chance: the machine
    has int8/bf16 matrix units (VNNI/AMX on a CPU, or CUDA), and, where `proj` gives the roofline floors, this
    machine's ceiling for that ratio (`ceilings`) is at least ASSERT_MARGIN x the bar. Below that margin, kernel
    efficiency and the machine's load decide the outcome; the notebook then prints the ratio, the ceiling and why
    it is not asserted. `passed`: every bar met as measured; `asserted`: any ratio is asserted; `asserted_passed`:
    the asserted ratios (and perplexity) meet their bars, what the notebook asserts. `best`: the best-here
    comparison (best.compare_best), where it was measured: the message then ends with what to run on this machine."""
    final = final_stage(rows)
    ppl = {r["stage"]: r["ppl_delta_pct"] for r in ppl_rows}
    out = {"final_stage": final["stage"],  # ratios measured within each round, median over rounds
           "throughput_ratio": final["throughput_x_base"], "ttft_idle_ratio": final["ttft_idle_x_base"],
           "ttft_loaded_ratio": final["ttft_loaded_x_base"], "ppl_delta_pct": ppl[final["stage"]],
           "throughput_rounds": final.get("throughput_x_base_rounds"), "ceilings": ceilings(rows, proj, kernels)}
    units = str(device).startswith("cuda") or bool(matrix_units.get("int8") or matrix_units.get("bf16"))
    names = {"throughput": ("throughput_ratio", "output throughput"), "ttft": ("ttft_idle_ratio", "idle TTFT")}
    asserted = {k: units and out["ceilings"].get(k, float("inf")) >= ASSERT_MARGIN * TARGET for k in names}
    fails = {k: f"{label} {out[key]:.2f}x{' lower' if k == 'ttft' else ''} < {TARGET}x"
             for k, (key, label) in names.items() if out[key] < TARGET}
    if abs(out["ppl_delta_pct"]) > PPL_TOLERANCE_PCT:
        fails["ppl"] = f"perplexity {out['ppl_delta_pct']:+.2f}% is outside +-{PPL_TOLERANCE_PCT}%"
    out["passed"] = not fails  # every bar met, as measured
    out["asserted"] = any(asserted.values())
    out["asserted_passed"] = not [k for k in fails if asserted.get(k, out["asserted"])]
    out["asserted_ratios"] = [names[k][1] for k, v in asserted.items() if v]
    summary = (f"{final['stage']} vs baseline: output throughput {out['throughput_ratio']:.2f}x, idle TTFT "
               f"{out['ttft_idle_ratio']:.2f}x lower, TTFT under load {out['ttft_loaded_ratio']:.2f}x lower, "
               f"perplexity {out['ppl_delta_pct']:+.2f}% (bar: {TARGET}x, {TARGET}x, within "
               f"+-{PPL_TOLERANCE_PCT}%; guide: {GUIDE['throughput'][1] / GUIDE['throughput'][0]:.2f}x and "
               f"{GUIDE['ttft_ms'][0] / GUIDE['ttft_ms'][1]:.2f}x)")
    if fails:
        summary += ". Not met: " + "; ".join(fails.values())
    c = out["ceilings"]
    if kernel_ratio(rows, kernels) is not None:
        fd, bd = compute_dtype(final), compute_dtype(rows[0])
        rate = {dt: matmul_tflops(kernels[dt]) for dt in (fd, bd)}
        summary += (f". Idle-TTFT ceiling {c['ttft']:.1f}x: the {fd} matmul ({kernels[fd]['kernel']}) ran at "
                    f"{rate[fd]:.2f} and the {bd} one at {rate[bd]:.2f} TFLOP/s in the same rounds")
    if not units:
        summary += (". Not asserted: this machine has no int8 or bf16 matrix units (no AVX512-VNNI/AVX-VNNI/AMX, "
                    "no CUDA GPU), so INT8 and bf16 have no fast kernels to run on; the factors above are what it "
                    "measured")
    for k, (key, label) in names.items():
        if out[key] > c.get(k, float("inf")) * (1 + NOISE_FLOOR):
            summary += (f". The measured {label} ratio ({out[key]:.2f}x) is above its ceiling ({c[k]:.1f}x): "
                        + above_ceiling_why(k, rows, proj, kernels))
        elif out[key] > c.get(k, float("inf")):
            summary += (f". The measured {label} ratio ({out[key]:.2f}x) reached its ceiling ({c[k]:.2f}x), inside "
                        f"the ±{NOISE_FLOOR:.0%} noise floor: the stack got all the roofline allows here")
        if units and not asserted[k]:
            summary += (f". {label[0].upper() + label[1:]} not asserted: this machine's ceiling for it is "
                        f"{out['ceilings'][k]:.1f}x (the final stage and the baseline both at their roofline floors), "
                        f"under {ASSERT_MARGIN}x the {TARGET}x bar, so kernel efficiency and the "
                        f"machine's load would decide it, not the stack; measured {out[key]:.2f}x")
    here = best_here_line(best)
    if here:
        summary += ". Best on this machine: " + here.rstrip(".")
    out["message"] = summary
    return out


def above_ceiling_why(which: str, rows: list[dict], proj: list[dict] | None, kernels: dict | None) -> str:
    """Why a measured ratio beat its ceiling. The idle-TTFT ceiling is the ratio of the matmul rates timed in the
    same rounds, so both stages are taken at the same fraction of their prefill floors; where the projection gives
    the fractions and the baseline's is the lower, that is the reason (its prefill spends more outside the matmuls:
    eager attention's passes over the scores, `generate`'s path; the later stages replace both). Otherwise the
    rates the ceiling divides by were timed at other moments than the stages."""
    p = {r["stage"]: r for r in proj or []}
    final, base = final_stage(rows), rows[0]
    fb = p.get(base["stage"], {}).get("ttft_fraction_of_floor")
    ff = p.get(final["stage"], {}).get("ttft_fraction_of_floor")
    if which == "ttft" and kernel_ratio(rows, kernels) is not None and fb and ff and fb < ff:
        return (f"the ceiling takes both stages at the same fraction of their prefill floors, but the baseline "
                f"reached {fb:.0%} of its floor and {final['stage']} {ff:.0%}: the baseline's prefill spends more "
                "outside the matmuls (eager attention's passes over the score matrix, generate's path), which the "
                "later stages replace")
    return ("the rates the ceiling divides by were timed at other moments than the stages, and the host's load "
            "changed in between, so this ceiling understates the machine")

