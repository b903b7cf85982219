"""The claims about serving many requests (notebooks 05 and 07): C9 (continuous batching +40% throughput,
-60% variance), C16 (a fixed batch cannot follow the load) and C12 (the case study's stack).

They read the servers' replay results and the case study's stages, which no other lesson's judges need.
"""

from __future__ import annotations

from labkit.course.claims.verdict import (
    NOT_MEASURABLE,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    Verdict,
    not_measured,
    source,
)

# ---------------------------------------------------------------- notebook 05: C9, C16

CB_THROUGHPUT_MIN = 1.4  # C9: +40% throughput over static batching
CB_VARIANCE_MAX = 0.4  # C9: 60% less latency variance (E2E std at most 0.4x static's)


def _servers(record: dict | None, trace: str) -> dict[str, dict]:
    rows = (record or {}).get("metrics", {}).get(trace, [])
    return {r["server"]: r for r in rows if r.get("status") == "ok"}


def c9(record: dict | None) -> Verdict:
    """Continuous batching against static batching on the Poisson trace: throughput and E2E-latency spread."""
    p = _servers(record, "poisson")
    if "engine" not in p or "static" not in p:
        return not_measured("C9")
    e, s = p["engine"], p["static"]
    # the median of the per-round ratios where the servers replayed in rounds (equal to this with one round)
    thr = e.get("throughput_x_vs_static") or e["output_throughput"] / s["output_throughput"]
    var = e["e2e_std_ms"] / s["e2e_std_ms"] if s.get("e2e_std_ms") else float("nan")
    ok_thr, ok_var = thr >= CB_THROUGHPUT_MIN, var <= CB_VARIANCE_MAX
    status = REPRODUCED if ok_thr and ok_var else PARTLY if ok_thr or ok_var else NOT_REPRODUCED
    ev = (f"Poisson trace: engine {thr:.2f}x static batching's output throughput (guide: {CB_THROUGHPUT_MIN}x); "
          f"E2E latency std {var:.2f}x static's (guide: {CB_VARIANCE_MAX}x)")
    if status == PARTLY:
        ev += "; " + ("throughput reproduced, variance not" if ok_thr else "variance reproduced, throughput not")
    return Verdict("C9", status, ev, measured=f"{thr:.2f}x throughput, {var:.2f}x std", **source(record))


def c16(record: dict | None) -> Verdict:
    """A fixed batch size cannot follow a changing load: under Poisson arrivals, static batching's p99 TTFT
    against the engine's."""
    p = _servers(record, "poisson")
    if "engine" not in p or "static" not in p:
        return not_measured("C16")
    e, s = p["engine"], p["static"]
    ev = f"Poisson trace: p99 TTFT static {s['ttft_p99_ms']:,.0f} ms vs engine {e['ttft_p99_ms']:,.0f} ms"
    a = _servers(record, "all_at_once")
    if "engine" in a and "static" in a:
        ae, st = a["engine"], a["static"]
        x = ae.get("throughput_x_vs_static") or ae["output_throughput"] / st["output_throughput"]
        ev += f"; all at once with equal lengths (static's best case): engine at {x:.2f}x static's throughput"
    status = REPRODUCED if e["ttft_p99_ms"] < s["ttft_p99_ms"] else NOT_REPRODUCED
    return Verdict("C16", status, ev, measured=f"p99 TTFT {s['ttft_p99_ms']:,.0f} -> {e['ttft_p99_ms']:,.0f} ms",
                   **source(record))


# ---------------------------------------------------------------- notebook 07: C12

def c12(record: dict | None) -> Verdict:
    """The case study: the guide's stack measured stage by stage; reproduced when the final stage passes the
    case study's bars (labkit.lessons.casestudy.TARGET on throughput and idle TTFT, perplexity within tolerance)."""
    m = (record or {}).get("metrics")
    if not m or "throughput_ratio" not in m:
        return not_measured("C12")
    ran = [r for r in m.get("stages", [])[1:] if r.get("status", "ok") == "ok" and r.get("throughput_x_prev")]
    factors = ", ".join(f"{r['stage']} {r['throughput_x_prev']:.2f}x (guide {r.get('guide_factor') or '-'})"
                        for r in ran)
    ev = f"{m.get('message', '')}. Throughput factor per stage: {factors}"
    measured = f"{m['throughput_ratio']:.2f}x throughput, {m['ttft_idle_ratio']:.2f}x idle TTFT"
    if not m.get("asserted"):
        return Verdict("C12", NOT_MEASURABLE, ev + ". Deciding it needs hardware whose int8 or bf16 matrix units "
                       "leave the bar well within reach (see the message)", measured=measured, **source(record))
    if not m.get("asserted_passed", m.get("passed")):
        return Verdict("C12", NOT_REPRODUCED, ev, measured=measured, **source(record))
    both = len(m.get("asserted_ratios", ["throughput", "ttft"])) >= 2
    return Verdict("C12", REPRODUCED if both else PARTLY, ev if both else ev + ". Reproduced for "
                   f"{' and '.join(m['asserted_ratios'])}; the other ratio is not decidable on this machine",
                   measured=measured, **source(record))
