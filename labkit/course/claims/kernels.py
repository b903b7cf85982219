"""The claims about kernels and memory (notebook 06): C10 (AMP plus empty_cache cuts memory 30%), C11
(FlashAttention-2 3x faster, 40% less memory), and C15 again from the compiled paths (kernels_verdicts).

labkit.lessons.kernels.verdict_inputs turns the lesson's tables into the figures judged here, so the lesson and
the ledger judge the same numbers the same way.
"""

from __future__ import annotations

from labkit.course.claims.measuring import c15
from labkit.course.claims.verdict import (
    NOT_MEASURABLE,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    Verdict,
    not_measured,
    source,
)

# ---------------------------------------------------------------- notebook 06 (kernels and memory): C10, C11, C15

C10_MEMORY_CUT = 0.30  # C10: AMP plus regular empty_cache() cut memory use by 30%
C10_TOLERANCE = 0.05  # a cut within 5 points of the guide's figure counts as reproducing it
C11_SPEEDUP = 3.0  # C11: FlashAttention-2 3x faster than plain attention ...
C11_MEMORY_SAVING = 0.40  # ... and 40% less memory


def c10(peaks: dict[str, float], device: str, record: dict | None = None) -> Verdict:
    """C10 from measured peak memory of the same inference (weights included), bytes: "fp32" (the baseline),
    "autocast" (AMP) and, on CUDA, "autocast+empty_cache". Reproduced if AMP with empty_cache cuts the peak by
    about 30%; partly if the cut is there but comes from AMP alone (empty_cache adding under a point), or, where
    empty_cache cannot be measured (no CUDA), if AMP alone gives it; not reproduced otherwise."""
    if not peaks.get("fp32") or not peaks.get("autocast"):
        return not_measured("C10")
    base, need = peaks["fp32"], C10_MEMORY_CUT - C10_TOLERANCE
    amp = 1 - peaks["autocast"] / base
    both = 1 - peaks["autocast+empty_cache"] / base if peaks.get("autocast+empty_cache") else None
    measured = f"autocast {-amp:+.0%}" + ("" if both is None else f", autocast + empty_cache {-both:+.0%}")
    ev = f"peak memory against fp32 on {device}: {measured}"
    if both is None:
        ev += "; empty_cache() is CUDA's (the CPU has no caching allocator to empty): not measurable here"
        status = PARTLY if amp >= need else NOT_REPRODUCED
    elif both >= need:
        status = REPRODUCED if both - amp >= 0.01 else PARTLY
        if status == PARTLY:
            ev += "; the cut is autocast's: empty_cache() lowers reserved memory, not the peak"
    else:
        status = NOT_REPRODUCED
    return Verdict("C10", status, ev, measured=measured, **source(record))


def c11(rows: list[dict], device: str, a100_length: int | None = None, skipped: str | None = None,
        record: dict | None = None) -> Verdict:
    """C11 from the attention sweep: one row per length {"n", "kernel", "speedup" (fused over eager, median of
    rounds), "conclusive", "memory_saving" (1 - fused peak / eager peak)}; judged at the longest length measured.
    Reproduced if the fused kernel is at least 3x faster (conclusively) and saves at least 40% of the memory,
    partly if one holds. `a100_length`: the shortest length at which the roofline lets a fused kernel reach 3x on
    an A100 (the guide's card); `skipped`: why no fused kernel could run here."""
    where = f"the guide's 3x needs n >= {a100_length:,} on an A100 by the roofline" if a100_length else \
        "the roofline does not give 3x on an A100 at any length tried"
    if not rows:
        if skipped:
            return Verdict("C11", NOT_MEASURABLE, f"no fused kernel runs here ({skipped}); {where}",
                           **source(record))
        return not_measured("C11")
    rows = sorted(rows, key=lambda r: r["n"])
    last = rows[-1]
    fast = last["speedup"] >= C11_SPEEDUP and last.get("conclusive", True)
    lean = last["memory_saving"] >= C11_MEMORY_SAVING
    status = REPRODUCED if fast and lean else PARTLY if fast or lean else NOT_REPRODUCED
    trend = ", ".join(f"n={r['n']:,}: {r['speedup']:.2f}x, {-r['memory_saving']:+.0%} memory" for r in rows)
    measured = f"{last['speedup']:.2f}x faster, {-last['memory_saving']:+.0%} memory at n={last['n']:,}"
    ev = (f"{last['kernel']} against eager attention on {device} ({trend}); this is the fused kernel this device "
          f"has, not FlashAttention-2 on an A100; {where}")
    return Verdict("C11", status, ev, measured=measured, **source(record))


def kernels_verdicts(sweep, prefill, comp, precision, cuda_rows: list[dict], device: str,
                     a100_length: int | None, record: dict | None = None) -> list[Verdict]:
    """C10, C11 and C15 from notebook 06's tables (labkit.lessons.kernels.verdict_inputs reads them)."""
    from labkit.lessons import kernels as kx

    got = kx.verdict_inputs(sweep, prefill, comp, precision, cuda_rows)
    v10 = c10(got["peaks"], device, record)
    v11 = c11(got["fused_rows"], device, a100_length, got["fused_skipped"], record)
    v11.evidence += got["prefill_note"]
    return [v10, v11, c15(got["cold_over_warm"], record)]
