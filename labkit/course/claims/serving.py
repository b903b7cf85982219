"""The claims about serving many requests (notebooks 05 and 07): C9 (continuous batching +40% throughput,
-60% variance), C16 (a fixed batch cannot follow the load) and C12 (the case study's stack).

They read the servers' replay results and the case study's stages, which no other lesson's judges need.
"""

from __future__ import annotations

from labkit.course.claims.verdict import (
    INCONCLUSIVE,
    NOT_MEASURED,
    Check,
    Verdict,
    check,
    judged,
    not_measured,
    ratio_check,
    source,
)

# ---------------------------------------------------------------- notebook 05: C9, C16

CB_THROUGHPUT_MIN = 1.4  # C9: +40% throughput over static batching
CB_VARIANCE_MAX = 0.4  # C9: 60% less latency variance (E2E std at most 0.4x static's)


def _servers(record: dict | None, trace: str) -> dict[str, dict]:
    rows = (record or {}).get("metrics", {}).get(trace, [])
    return {r["server"]: r for r in rows if r.get("status") == "ok"}


def _per_round(e: dict, s: dict) -> list[float]:
    """The engine's throughput over static's within each round, where the servers replayed in rounds."""
    er, sr = e.get("throughput_rounds") or [], s.get("throughput_rounds") or []
    return [a / b for a, b in zip(er, sr, strict=True)] if len(er) == len(sr) and all(sr) else []


def c9(record: dict | None, noise: float | None = None) -> Verdict:
    """Continuous batching against static batching on the Poisson trace: output throughput at least 1.4x
    (the median of the per-round ratios where the servers replayed in rounds; inconclusive where the rounds
    disagree or the ratio is inside the noise floor, `noise` where measured) and E2E-latency std at most 0.4x
    static's. Reproduced if both hold, partly if one does."""
    p = _servers(record, "poisson")
    if "engine" not in p or "static" not in p:
        return not_measured("C9")
    e, s = p["engine"], p["static"]
    thr = e.get("throughput_x_vs_static") or e["output_throughput"] / s["output_throughput"]
    checks = [ratio_check("engine's output throughput against static batching's", thr, CB_THROUGHPUT_MIN,
                          noise=noise, rounds=_per_round(e, s))]
    if s.get("e2e_std_ms"):
        checks.append(ratio_check("its E2E latency std against static's", e["e2e_std_ms"] / s["e2e_std_ms"],
                                  hi=CB_VARIANCE_MAX, noise=noise))
    else:
        checks.append(Check("E2E latency std against static's", "", f"guide <= {CB_VARIANCE_MAX:g}x", INCONCLUSIVE,
                            "static batching's latencies did not spread"))
    measured = ", ".join(c.shown for c in checks if c.shown)
    return judged("C9", checks, head="Poisson trace", measured=measured, record=record)


def _loads(record: dict | None) -> list[tuple[str, dict, dict]]:
    """The changing load notebook 05 measured: (label, static's row, engine's row) for each rate of the rate
    sweep and, where the trace was bursty (burstiness below 1), the Poisson trace itself."""
    out = []
    burst = ((record or {}).get("config") or {}).get("burstiness", 1.0)
    p = _servers(record, "poisson")
    if burst is not None and burst < 1 and "engine" in p and "static" in p:
        out.append((f"bursty arrivals (burstiness {burst:g})", p["static"], p["engine"]))
    by_rate: dict[float, dict[str, dict]] = {}
    for r in (record or {}).get("metrics", {}).get("rate_sweep") or []:
        if r.get("status") == "ok":
            by_rate.setdefault(r["rate"], {})[r["server"]] = r
    out += [(f"{rate:g} requests/s", g["static"], g["engine"]) for rate, g in sorted(by_rate.items())
            if "static" in g and "engine" in g]
    return out


def c16(record: dict | None, noise: float | None = None) -> Verdict:
    """A fixed batch size cannot follow a changing load: at each load notebook 05 measured (every rate of its
    rate sweep, and bursty arrivals where burstiness < 1), static batching's p99 TTFT over the engine's, held
    against 1x (inside the noise floor, bench.NOISE_FLOOR or `noise`, it is inconclusive). Reproduced if the
    fixed batch falls behind at every load, partly at some. One steady load is not the claim: with fewer than
    two rates and no bursts it is not measured yet (the evidence says how to measure it)."""
    loads = _loads(record)
    burst = ((record or {}).get("config") or {}).get("burstiness", 1.0)
    p = _servers(record, "poisson")
    if not loads and ("engine" not in p or "static" not in p):
        return not_measured("C16")
    if len(loads) < 2 and not (burst is not None and burst < 1):
        steady = (f"Poisson trace p99 TTFT static {p['static']['ttft_p99_ms']:,.0f} ms vs engine "
                  f"{p['engine']['ttft_p99_ms']:,.0f} ms" if "engine" in p and "static" in p else "one rate only")
        return Verdict("C16", NOT_MEASURED, f"one steady load measured ({steady}); the claim is about a changing "
                       "load: run notebook 05 with two or more rates (-p rates='[1.0,4.0]') or bursty arrivals "
                       "(-p burstiness=0.3)", **source(record))
    checks = [ratio_check(f"static's p99 TTFT over the engine's at {label}", s["ttft_p99_ms"] / e["ttft_p99_ms"],
                          1.0, noise=noise, bar="guide: the fixed batch falls behind, above 1x")
              for label, s, e in loads]
    a = _servers(record, "all_at_once")
    tail = ""
    if "engine" in a and "static" in a:
        ae, st = a["engine"], a["static"]
        x = ae.get("throughput_x_vs_static") or ae["output_throughput"] / st["output_throughput"]
        tail = f"; all at once with equal lengths (static's best case): engine at {x:.2f}x static's throughput"
    return judged("C16", checks, tail=tail, measured=", ".join(c.shown for c in checks), record=record)


# ---------------------------------------------------------------- notebook 07: C12

def c12(record: dict | None) -> Verdict:
    """The case study: the guide's stack measured stage by stage on this machine, judged from the measured
    factors: the final stage's output throughput and idle TTFT against the baseline's, each held against the
    case study's bar (labkit.lessons.casestudy.TARGET, the guide's ~4x; inconclusive where the rounds
    disagree), and its held-out perplexity within the tolerance. Reproduced if all hold, partly if some do."""
    m = (record or {}).get("metrics")
    if not m or "throughput_ratio" not in m:
        return not_measured("C12")
    from labkit.lessons.casestudy.check import PPL_TOLERANCE_PCT, TARGET
    from labkit.lessons.casestudy.stages import GUIDE

    ran = [r for r in m.get("stages", [])[1:] if r.get("status", "ok") == "ok" and r.get("throughput_x_prev")]
    factors = ", ".join(f"{r['stage']} {r['throughput_x_prev']:.2f}x (guide {r.get('guide_factor') or '-'})"
                        for r in ran)
    (t0, t1), (f0, f1) = GUIDE["ttft_ms"], GUIDE["throughput"]
    checks = [ratio_check("output throughput, final stage over baseline", m["throughput_ratio"], TARGET,
                          rounds=m.get("throughput_rounds") or (), bar=f"guide {f1 / f0:.2f}x, bar {TARGET:g}x"),
              ratio_check("idle TTFT, baseline over final stage", m["ttft_idle_ratio"], TARGET,
                          bar=f"guide {t0 / t1:.2f}x, bar {TARGET:g}x")]
    if m.get("ppl_delta_pct") is not None:
        checks.append(check("held-out perplexity", f"{m['ppl_delta_pct']:+.2f}%", f"within +-{PPL_TOLERANCE_PCT:g}%",
                            abs(m["ppl_delta_pct"]) <= PPL_TOLERANCE_PCT))
    return judged("C12", checks, head=f"throughput factor per stage: {factors}",
                  tail=f". {m['message']}" if m.get("message") else "",
                  measured=f"{m['throughput_ratio']:.2f}x throughput, {m['ttft_idle_ratio']:.2f}x idle TTFT",
                  record=record)
