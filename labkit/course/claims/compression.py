"""The claims about making the model smaller (notebooks 02 and 03): C5 (INT8 at 1/4 size, >95% accuracy), C6
(GPTQ/AWQ beat plain rounding), C13 (INT4 falls short), C7 (40% magnitude pruning: 2.1x at -1.2%).

Each is judged from the quality and speed tables the quantization and pruning lessons store; their notebooks'
prose takes the thresholds from the constants here.
"""

from __future__ import annotations

from labkit.core.units import pct_beside
from labkit.course.claims.verdict import (
    INCONCLUSIVE,
    NOT_MEASURABLE,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    Check,
    Verdict,
    check,
    combine,
    judged,
    not_measured,
    ratio_check,
)

# ---------------------------------------------------------------- notebook 02: C5, C6, C13

INT8_SIZE_MAX = 0.27  # C5: "1/4 of fp32" (8 bits of 32, plus scales)
INT8_PPL_MAX = 1.05  # C5: "over 95% of accuracy", read as perplexity within 5% of fp32 ...
INT8_AGREEMENT_MIN = 0.95  # ... and 95% of greedy tokens the same as fp32's
INT4_NOTICEABLE = 0.01  # C13: an INT4 loss counts as a loss when perplexity rises by more than 1%
INT8_QUALITY_METHODS = ("int8-dynamic", "int8-weight-only", "int8-dynamic-legacy", "bnb-int8")


def _quality(record: dict | None) -> dict[str, dict]:
    rows = (record or {}).get("metrics", {}).get("quality", [])
    return {r["method"]: r for r in rows if r.get("status") == "ok"}


def c5(record: dict | None) -> Verdict:
    """INT8 at 1/4 of fp32 keeping >95% accuracy: the quantized layers' size (at most INT8_SIZE_MAX of fp32),
    perplexity (at most INT8_PPL_MAX x fp32's) and greedy agreement (at least INT8_AGREEMENT_MIN, where
    measured). Reproduced if all hold, partly if some do."""
    q = _quality(record)
    int8 = [q[m] for m in INT8_QUALITY_METHODS if m in q]
    if "fp32" not in q or not int8:
        return not_measured("C5")
    r = int8[0]
    size = r["bits_per_weight"] / 32
    kept = r.get("token_agreement")
    checks = [check("quantized layers", f"{size:.2f} of fp32", f"guide 1/4, at most {INT8_SIZE_MAX:.2f}",
                    size <= INT8_SIZE_MAX, f"{r['bits_per_weight']:.2f} bits each; whole model "
                    f"{r['bytes'] / q['fp32']['bytes']:.2f} of fp32, embeddings kept"),
              check("perplexity", f"x{r['ppl_vs_fp32']:.4f}", f"at most x{INT8_PPL_MAX}",
                    r["ppl_vs_fp32"] <= INT8_PPL_MAX)]
    if kept is not None:
        checks.append(check("greedy tokens agreeing", f"{kept:.1%}", f"at least {INT8_AGREEMENT_MIN:.0%}",
                            kept >= INT8_AGREEMENT_MIN))
    return judged("C5", checks, head=r["method"], measured=f"{size:.2f} of fp32, ppl x{r['ppl_vs_fp32']:.3f}",
                  record=record)


def c6(record: dict | None) -> Verdict:
    """GPTQ and AWQ lose less than plain rounding (RTN) at the same bits and group size: each one's perplexity gap
    above fp32 against RTN's. Reproduced if both are below, partly if one is."""
    q = _quality(record)
    if not all(m in q for m in ("rtn", "gptq", "awq")):
        return not_measured("C6")
    gap = {m: q[m]["ppl_vs_fp32"] - 1 for m in ("rtn", "gptq", "awq")}
    checks = [check(f"{m} perplexity above fp32", f"{gap[m]:+.2%}", f"below plain rounding's {gap['rtn']:+.2%}",
                    gap[m] < gap["rtn"]) for m in ("gptq", "awq")]
    return judged("C6", checks, head="at the same bits and group size",
                  measured=", ".join(f"{m} {g:+.2%}" for m, g in gap.items()), record=record)


def c13(record: dict | None) -> Verdict:
    """INT4 can fall short where accuracy matters: measurable here is whether INT4 loses noticeably more than
    INT8 (its perplexity gap above INT8's and above INT4_NOTICEABLE); whether that is too much for finance or
    medicine needs a task metric (not measurable here), so the best status is "partly reproduced"."""
    q = _quality(record)
    int8 = [q[m] for m in INT8_QUALITY_METHODS if m in q]
    int4 = q.get("int4-rtn") or q.get("rtn")
    if not int8 or not int4:
        return not_measured("C13")
    g4, g8 = int4["ppl_vs_fp32"] - 1, int8[0]["ppl_vs_fp32"] - 1
    bar = max(g8, INT4_NOTICEABLE)
    checks = [check(f"{int4['method']} perplexity above fp32", f"{g4:+.2%}",
                    f"above {int8[0]['method']}'s {g8:+.2%} and above {INT4_NOTICEABLE:.0%}", g4 > bar,
                    "" if g4 > bar else ("more than INT8 but under 1%" if g4 > g8 else "no more than INT8")),
              Check("task accuracy in finance or medicine", "", "guide: falls short", NOT_MEASURABLE,
                    "needs a task metric, not perplexity")]
    return judged("C13", checks, measured=f"INT4 {g4:+.2%}, INT8 {g8:+.2%}", record=record)


# ---------------------------------------------------------------- notebook 03 (pruning): C7

C7_SPARSITY = 0.4  # the guide's cut: 40% of the weights of LLaMA-7B
C7_SPEEDUP = 2.1  # the speed it claims for that cut
C7_LOSS = 0.012  # and the accuracy it claims to lose
C7_SPEED_TOLERANCE = 0.10  # a measured speed-up up to 10% below 2.1x still counts as 2.1x


def _c7_part(d: dict) -> str:
    """What was measured of one cut, beside its checks: its ratio in the lesson's words and its quality."""
    words = f"{d['label']}: decode {d['decode_words']}, held-out perplexity {pct_beside(d['ppl_change'], C7_LOSS)}"
    if d.get("agreement") is not None:
        words += f", greedy tokens agreeing with dense {d['agreement']:.1%}"
    if d.get("ppl_change_recovered") is not None:
        words += f", perplexity {d['ppl_change_recovered']:+.1%} after the recovery fine-tune"
    return words


def _c7_speed(d: dict, what: str) -> Check:
    """A cut's decode speed-up against 2.1x (within C7_SPEED_TOLERANCE), inconclusive where its rounds straddle
    the bar (`decode_rounds`) or its noise band reaches across it (`noise` where measured). The lesson's own
    "inconclusive" (no effect against dense, inside the noise) is not the bar's: 1.00x is a clear miss of 1.9x;
    it is only where the median meets the bar (then rounds on both sides of 1x straddle it)."""
    floor = C7_SPEEDUP * (1 - C7_SPEED_TOLERANCE)
    c = ratio_check(what, d["decode_x"], floor, noise=d.get("noise"), rounds=d.get("decode_rounds") or (),
                    bar=f"guide {C7_SPEEDUP}x, at least {floor:.1f}x")
    unclear = d.get("conclusive") is False or str(d.get("decode_words", "")).startswith("inconclusive")
    if unclear and c.status == REPRODUCED:  # rounds on both sides of 1x straddle the bar too
        return Check(c.what, c.shown, c.bar, INCONCLUSIVE, f"the lesson measured it as {d['decode_words']}")
    return c


def _c7_rule(checks) -> str:
    """The magnitude cut's speed and loss decide (combine); a structured 40% cut reaching the speed makes the
    claim's speed half hold, so the verdict is at least partly."""
    magnitude = [c for c in checks if not c.what.startswith("another")]
    other = [c for c in checks if c.what.startswith("another")]
    status = combine(magnitude) if magnitude else NOT_REPRODUCED
    if status in (NOT_REPRODUCED, INCONCLUSIVE) and any(c.status == REPRODUCED for c in other):
        return PARTLY
    return status


def c7(magnitude: dict | None, structured: dict | None = None, record: dict | None = None) -> Verdict:
    """C7 from the measured 40% cuts. `magnitude`: the guide's method, unstructured magnitude pruning of 40% of
    the weights; `structured`: a structured cut of 40% (smaller matrices); each a dict {"label", "decode_x",
    "decode_words" (bench.Ratio.words()), "ppl_change" (relative), "agreement" (greedy tokens, optional),
    "ppl_change_recovered" (optional), "conclusive", "decode_rounds", "noise" (optional)}. The accuracy loss is
    read as the held-out perplexity increase.

    Reproduced: magnitude pruning at 40% decodes at least 2.1x faster (within 10%) and loses at most 1.2%.
    Partly reproduced: one half holds: the magnitude cut loses at most 1.2% (but brings no such speed), or a
    40% cut of either kind reaches the speed-up. Not reproduced: neither. A speed inside the noise is
    inconclusive, and a claim whose only measured half is inconclusive is inconclusive."""
    if magnitude is None and structured is None:
        return not_measured("C7")
    checks = []
    if magnitude is not None:
        checks += [_c7_speed(magnitude, f"{magnitude['label']} decode"),
                   check(f"{magnitude['label']} held-out perplexity", pct_beside(magnitude["ppl_change"], C7_LOSS),
                         f"guide at most {C7_LOSS:.1%} lost", magnitude["ppl_change"] <= C7_LOSS)]
    if structured is not None:
        checks.append(_c7_speed(structured, f"another 40% cut, {structured['label']}, decode"))
    main = magnitude or structured
    head = "; ".join(_c7_part(d) for d in (magnitude, structured) if d is not None)
    return judged("C7", checks, head=head, rule=_c7_rule,
                  measured=f"{main['label']}: {main['decode_x']:.2f}x decode, "
                           f"{pct_beside(main['ppl_change'], C7_LOSS)} perplexity",
                  record=record)
