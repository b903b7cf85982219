"""The claims about making the model smaller (notebooks 02 and 03): C5 (INT8 at 1/4 size, >95% accuracy), C6
(GPTQ/AWQ beat plain rounding), C13 (INT4 falls short), C7 (40% magnitude pruning: 2.1x at -1.2%).

Each is judged from the quality and speed tables the quantization and pruning lessons store; their notebooks'
prose takes the thresholds from the constants here.
"""

from __future__ import annotations

from labkit.course.claims.verdict import (
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    Verdict,
    not_measured,
    source,
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
    """INT8 at 1/4 of fp32 keeping >95% accuracy: size of the quantized layers, perplexity, greedy agreement."""
    q = _quality(record)
    int8 = [q[m] for m in INT8_QUALITY_METHODS if m in q]
    if "fp32" not in q or not int8:
        return not_measured("C5")
    r = int8[0]
    size = r["bits_per_weight"] / 32
    kept = r.get("token_agreement")
    small, close = size <= INT8_SIZE_MAX, r["ppl_vs_fp32"] <= INT8_PPL_MAX and (kept is None or
                                                                                 kept >= INT8_AGREEMENT_MIN)
    ev = (f"{r['method']}: quantized layers {size:.2f} of fp32 ({r['bits_per_weight']:.2f} bits each; whole model "
          f"{r['bytes'] / q['fp32']['bytes']:.2f} of fp32, embeddings kept); perplexity x{r['ppl_vs_fp32']:.4f}"
          + (f", greedy tokens agreeing {kept:.1%}" if kept is not None else ""))
    status = REPRODUCED if small and close else PARTLY if small or close else NOT_REPRODUCED
    if status == PARTLY:
        ev += "; " + ("size reproduced, accuracy not" if small else "accuracy reproduced, size not")
    return Verdict("C5", status, ev, measured=f"{size:.2f} of fp32, ppl x{r['ppl_vs_fp32']:.3f}", **source(record))


def c6(record: dict | None) -> Verdict:
    """GPTQ and AWQ lose less than plain rounding (RTN) at the same bits and group size."""
    q = _quality(record)
    if not all(m in q for m in ("rtn", "gptq", "awq")):
        return not_measured("C6")
    gap = {m: q[m]["ppl_vs_fp32"] - 1 for m in ("rtn", "gptq", "awq")}
    better = [m for m in ("gptq", "awq") if gap[m] < gap["rtn"]]
    status = REPRODUCED if len(better) == 2 else PARTLY if better else NOT_REPRODUCED
    ev = "perplexity above fp32 at the same bits and group size: " + ", ".join(f"{m} {g:+.2%}" for m, g in gap.items())
    if status == PARTLY:
        ev += f"; only {better[0]} beats plain rounding"
    return Verdict("C6", status, ev, measured=", ".join(f"{m} {g:+.2%}" for m, g in gap.items()), **source(record))


def c13(record: dict | None) -> Verdict:
    """INT4 can fall short where accuracy matters: measurable here is whether INT4 loses noticeably more than
    INT8 (perplexity up by more than INT4_NOTICEABLE); whether that is too much for finance or medicine needs a
    task metric, so the best status is "partly reproduced"."""
    q = _quality(record)
    int8 = [q[m] for m in INT8_QUALITY_METHODS if m in q]
    int4 = q.get("int4-rtn") or q.get("rtn")
    if not int8 or not int4:
        return not_measured("C13")
    g4, g8 = int4["ppl_vs_fp32"] - 1, int8[0]["ppl_vs_fp32"] - 1
    ev = f"{int4['method']} perplexity {g4:+.2%} vs fp32, {int8[0]['method']} {g8:+.2%}"
    if g4 > g8 and g4 > INT4_NOTICEABLE:
        return Verdict("C13", PARTLY, ev + f": INT4 loses more than INT8, beyond {INT4_NOTICEABLE:.0%}; whether that "
                       "is too much for finance or medicine needs a task metric, not perplexity",
                       measured=f"INT4 {g4:+.2%}, INT8 {g8:+.2%}", **source(record))
    why = (f"INT4 loses more than INT8 but under {INT4_NOTICEABLE:.0%} of perplexity" if g4 > g8 else
           "INT4 loses no more than INT8 here")
    return Verdict("C13", NOT_REPRODUCED, f"{ev}: {why}", measured=f"INT4 {g4:+.2%}, INT8 {g8:+.2%}",
                   **source(record))


# ---------------------------------------------------------------- notebook 03 (pruning): C7

C7_SPARSITY = 0.4  # the guide's cut: 40% of the weights of LLaMA-7B
C7_SPEEDUP = 2.1  # the speed it claims for that cut
C7_LOSS = 0.012  # and the accuracy it claims to lose
C7_SPEED_TOLERANCE = 0.10  # a measured speed-up up to 10% below 2.1x still counts as 2.1x


def _c7_part(d: dict) -> str:
    words = (f"{d['label']}: decode {d['decode_words']}, held-out perplexity {d['ppl_change']:+.1%}")
    if d.get("agreement") is not None:
        words += f", greedy tokens agreeing with dense {d['agreement']:.1%}"
    if d.get("ppl_change_recovered") is not None:
        words += f" ({d['ppl_change_recovered']:+.1%} after the recovery fine-tune)"
    return words


def c7(magnitude: dict | None, structured: dict | None = None, record: dict | None = None) -> Verdict:
    """C7 from the measured 40% cuts. `magnitude`: the guide's method, unstructured magnitude pruning of 40% of
    the weights; `structured`: a structured cut of 40% (smaller matrices); each a dict {"label", "decode_x",
    "decode_words" (bench.Ratio.words()), "ppl_change" (relative), "agreement" (greedy tokens, optional),
    "ppl_change_recovered" (optional)}. The accuracy loss is read as the held-out perplexity increase.

    Reproduced: magnitude pruning at 40% decodes at least 2.1x faster (within 10%) and loses at most 1.2%.
    Partly reproduced: one half holds: the magnitude cut loses at most 1.2% (but brings no such speed), or a
    40% cut of either kind reaches the speed-up. Not reproduced: neither."""
    if magnitude is None and structured is None:
        return not_measured("C7")
    floor = C7_SPEEDUP * (1 - C7_SPEED_TOLERANCE)
    fast = [d for d in (magnitude, structured) if d is not None and d["decode_x"] >= floor]
    quality_kept = magnitude is not None and magnitude["ppl_change"] <= C7_LOSS
    magnitude_fast = magnitude is not None and magnitude in fast
    if quality_kept and magnitude_fast:
        status = REPRODUCED
    elif quality_kept or fast:
        status = PARTLY
    else:
        status = NOT_REPRODUCED
    parts = [_c7_part(d) for d in (magnitude, structured) if d is not None]
    held = []
    if magnitude is not None:
        held.append(f"the magnitude cut {'keeps' if quality_kept else 'does not keep'} perplexity within "
                    f"{C7_LOSS:.1%}")
    held.append(f"{'a' if fast else 'no'} 40% cut reaches {floor:.1f}x ({C7_SPEEDUP}x within "
                f"{C7_SPEED_TOLERANCE:.0%})" + (f": {', '.join(d['label'] for d in fast)}" if fast else ""))
    main = magnitude or structured
    judged = "; ".join(held)
    return Verdict("C7", status, "; ".join(parts) + ". " + judged[0].upper() + judged[1:] + ".",
                   measured=f"{main['label']}: {main['decode_x']:.2f}x decode, {main['ppl_change']:+.1%} perplexity",
                   **source(record))
