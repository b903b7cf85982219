"""The claims about kernels and memory (notebook 06): C10 (AMP plus empty_cache cuts memory 30%), C11
(FlashAttention-2 3x faster, 40% less memory), and C15 again from the compiled paths (kernels_verdicts).

labkit.lessons.kernels.verdict_inputs turns the lesson's tables into the figures judged here, so the lesson and
the ledger judge the same numbers the same way.
"""

from __future__ import annotations

from labkit.course.claims.measuring import c15
from labkit.course.claims.verdict import (
    INCONCLUSIVE,
    NOT_MEASURABLE,
    NOT_REPRODUCED,
    REPRODUCED,
    Check,
    Verdict,
    check,
    combine,
    gpus,
    judged,
    not_measured,
    on_hardware,
    ratio_check,
)

# ---------------------------------------------------------------- notebook 06 (kernels and memory): C10, C11, C15

C10_MEMORY_CUT = 0.30  # C10: AMP plus regular empty_cache() cut memory use by 30%
C10_TOLERANCE = 0.05  # a cut within 5 points of the guide's figure counts as reproducing it
C10_EMPTY_CACHE_MIN = 0.01  # empty_cache() counts as part of the cut when it lowers the peak by at least a point
C11_SPEEDUP = 3.0  # C11: FlashAttention-2 3x faster than plain attention ...
C11_MEMORY_SAVING = 0.40  # ... and 40% less memory


def _c10_rule(checks) -> str:
    """No cut, no claim: the empty_cache part counts only where the whole cut is there."""
    return NOT_REPRODUCED if checks[0].status == NOT_REPRODUCED else combine(checks)


def c10(peaks: dict[str, float], device: str, record: dict | None = None) -> Verdict:
    """C10 from measured peak memory of the same inference (weights included), bytes: "fp32" (the baseline),
    "autocast" (AMP) and, on CUDA, "autocast+empty_cache". The claim is about torch.cuda.empty_cache(): without
    CUDA it is not measurable here (the evidence gives autocast's own figure, measured instead). On CUDA:
    reproduced if AMP with empty_cache cuts the peak by about 30% (at least C10_MEMORY_CUT - C10_TOLERANCE) and
    empty_cache adds at least C10_EMPTY_CACHE_MIN to it; partly if the cut is autocast's alone; not reproduced
    if there is no such cut."""
    if not peaks.get("fp32") or not peaks.get("autocast"):
        return not_measured("C10")
    base, need = peaks["fp32"], C10_MEMORY_CUT - C10_TOLERANCE
    amp = 1 - peaks["autocast"] / base
    both = 1 - peaks["autocast+empty_cache"] / base if peaks.get("autocast+empty_cache") else None
    measured = f"autocast {-amp:+.0%}" + ("" if both is None else f", autocast + empty_cache {-both:+.0%}")
    if both is None:
        return judged("C10", [Check("autocast + empty_cache() peak", "", f"guide {-C10_MEMORY_CUT:+.0%}",
                                    NOT_MEASURABLE, "empty_cache() is CUDA's (the CPU has no caching allocator to "
                                    "empty): it needs a CUDA GPU")],
                      head=f"measured instead on {device}: autocast alone {-amp:+.0%} peak memory against fp32",
                      measured=measured, record=record)
    checks = [check("autocast + empty_cache() peak against fp32", f"{-both:+.0%}",
                    f"guide {-C10_MEMORY_CUT:+.0%}, at least {need:.0%} cut", both >= need),
              check("empty_cache()'s own part", f"{-(both - amp):+.0%} beyond autocast's {-amp:+.0%}",
                    f"at least {C10_EMPTY_CACHE_MIN:.0%}", both - amp >= C10_EMPTY_CACHE_MIN,
                    "" if both - amp >= C10_EMPTY_CACHE_MIN else "empty_cache() lowers reserved memory, not the peak")]
    return judged("C10", checks, head=f"peak memory on {device}", measured=measured, record=record, rule=_c10_rule)


def c11(rows: list[dict], device: str, a100_length: int | None = None, skipped: str | None = None,
        record: dict | None = None, gpu: str | None = None) -> Verdict:
    """C11 from the attention sweep: one row per length {"n", "kernel", "speedup" (fused over eager, median of
    rounds), "conclusive", "memory_saving" (1 - fused peak / eager peak)}; judged at the longest length measured.
    The claim is about FlashAttention-2 on an A100: on other hardware (`gpu`, default: the GPUs in `record`'s
    fingerprint) or with another kernel it is not measurable here, and the evidence gives the fused kernel this
    device has, measured instead. On an A100 running a flash kernel: reproduced if it is at least 3x faster
    (rounds straddling 3x is inconclusive) and saves at least 40% of the memory,
    partly if one holds. `a100_length`: the shortest length at which the roofline lets a fused kernel reach 3x
    on an A100; `skipped`: why no fused kernel could run here."""
    where = f"the guide's 3x needs n >= {a100_length:,} on an A100 by the roofline" if a100_length else \
        "the roofline does not give 3x on an A100 at any length tried"
    if not rows:
        if skipped:
            return judged("C11", [Check("a fused attention kernel", "", "guide 3x, -40% memory", NOT_MEASURABLE,
                                        f"none runs here ({skipped})")], tail=f"; {where}", record=record)
        return not_measured("C11")
    rows = sorted(rows, key=lambda r: r["n"])
    last = rows[-1]
    mixed = len({r["kernel"] for r in rows}) > 1  # the fastest fused kernel differs between lengths: name each
    trend = ", ".join(f"n={r['n']:,}: {r['kernel'] + ' ' if mixed else ''}{r['speedup']:.2f}x, "
                      f"{-r['memory_saving']:+.0%} memory" for r in rows)
    measured = f"{last['speedup']:.2f}x faster, {-last['memory_saving']:+.0%} memory at n={last['n']:,}"
    names = [gpu] if gpu else gpus(record)
    head = (f"the fastest fused kernel against eager attention on {device} ({trend})" if mixed else
            f"{last['kernel']} against eager attention on {device} ({trend})")
    if not (str(device).startswith("cuda") and "flash" in str(last["kernel"]).lower() and on_hardware("C11", names)):
        here = ", ".join(names) or "no GPU"
        return judged("C11", [Check("FlashAttention-2 on an A100", "", "guide 3x, -40% memory", NOT_MEASURABLE,
                                    f"this machine has {here}; what ran instead is the fused kernel this device has")],
                      head=f"measured instead: {head}", tail=f"; {where}", measured=measured, record=record)
    speed = ratio_check(f"speed-up at n={last['n']:,}", last["speedup"], C11_SPEEDUP, rounds=last.get("rounds") or ())
    if last.get("conclusive") is False and speed.status == REPRODUCED:  # its rounds disagree about faster than 1x
        speed = Check(speed.what, speed.shown, speed.bar, INCONCLUSIVE, "its rounds straddle 1x, so they straddle 3x")
    checks = [speed, check(f"memory saved at n={last['n']:,}", f"{last['memory_saving']:.0%}",
                           f"guide at least {C11_MEMORY_SAVING:.0%}", last["memory_saving"] >= C11_MEMORY_SAVING)]
    return judged("C11", checks, head=head, tail=f"; {where}", measured=measured, record=record)


def kernels_verdicts(sweep, prefill, comp, precision, cuda_rows: list[dict], device: str,
                     a100_length: int | None, record: dict | None = None) -> list[Verdict]:
    """C10, C11 and C15 from notebook 06's tables (labkit.lessons.kernels.verdict_inputs reads them)."""
    from labkit.lessons import kernels as kx

    got = kx.verdict_inputs(sweep, prefill, comp, precision, cuda_rows)
    v10 = c10(got["peaks"], device, record)
    v11 = c11(got["fused_rows"], device, a100_length, got["fused_skipped"], record)
    v11.evidence += got["prefill_note"]
    return [v10, v11, c15(got["cold_over_warm"], record)]
