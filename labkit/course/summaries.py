"""One short summary per lesson for the index page: the numbers a learner looks for first (with units), read
from the lesson's latest record. Each function takes a record's metrics and returns table rows [label, text];
labkit.course.catalog names which lesson uses which, and labkit.course.report lays them out. A record written by
an older run may lack a key: the row is left out or shows "–", never an error.
"""

from __future__ import annotations

import html

from labkit.core.units import fmt_bytes

# ---------------------------------------------------------------- numbers for people

def fmt(v, unit: str = "") -> str:
    """A number as a person reads it: thousands separators, sensible decimals, the unit after it; None as –."""
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return html.escape(str(v))
    a = abs(v)
    text = f"{v:,.0f}" if a >= 100 else f"{v:,.1f}" if a >= 10 else f"{v:.2f}" if a >= 0.01 else f"{v:.2g}"
    return f"{text} {unit}".strip() if unit not in ("x", "%") else f"{text}{unit}"


# ---------------------------------------------------------------- one summary per lesson

def methodology(m: dict) -> list[list[str]]:
    return [["TTFT p50 (512-token prompt)", fmt(m.get("ttft_median_ms"), "ms")],
            ["TPOT p50", fmt(m.get("tpot_median_ms"), "ms")],
            ["output throughput, one request at a time", fmt(m.get("output_throughput"), "tok/s")],
            ["first request / steady state (E2E)", fmt(m.get("cold_over_warm_E2E"), "x")],
            ["noise floor (A against A)", fmt(100 * m["noise_floor"], "%") if m.get("noise_floor") else "–"]]


def hardware(m: dict) -> list[list[str]]:
    p = m.get("probes", {}).get(m.get("device", "cpu"), {})
    b = m.get("baseline", {})
    rows = [["memory bandwidth (best probe)", fmt(p.get("bandwidth_gbps", {}).get("best"), "GB/s")]]
    rows += [[f"matrix multiply, {dt}", fmt(v, "GFLOP/s" if dt != "int8" else "GOP/s")]
             for dt, v in p.get("matmul_gflops", {}).items()]
    if b:
        rows.append([f"baseline decode ({b.get('model')}, {b.get('layers')} layers)",
                     f"{fmt(b.get('tpot_s', 0) * 1e3, 'ms')}: {fmt(100 * b.get('decode_fraction', 0), '%')} of its "
                     "floor"])
        rows.append(["baseline prefill", f"{fmt(b.get('prefill_s', 0) * 1e3, 'ms')}: "
                                         f"{fmt(100 * b.get('prefill_fraction', 0), '%')} of its floor"])
    return rows


def quantization(m: dict) -> list[list[str]]:
    q = {r["method"]: r for r in m.get("quality", []) if r.get("status") == "ok"}
    s = [r for r in m.get("speed", []) if r.get("status") == "ok" and r.get("decode_x_vs_fp32")]
    rows = []
    if s:
        best = max(s, key=lambda r: r["decode_x_vs_fp32"])
        rows.append(["fastest batch-1 decode", f"{html.escape(best['method'])}: "
                     f"{fmt(best['decode_ms_per_token'], 'ms')}/token, {fmt(best['decode_x_vs_fp32'], 'x')} fp32"])
    from labkit.techniques.quant import INT8_METHODS

    four = ("gptq", "awq", "rtn", "int4-rtn", "bnb-nf4")
    for label, names in (("best 8-bit quality", INT8_METHODS), ("best 4-bit quality", four)):
        got = [q[n] for n in names if n in q]
        if got:
            r = min(got, key=lambda r: r["ppl_vs_fp32"])
            rows.append([label, f"{html.escape(r['method'])}: perplexity {fmt(100 * (r['ppl_vs_fp32'] - 1), '%')} vs "
                                f"fp32, {fmt(r['bits_per_weight'])} bits/weight, {fmt_bytes(r.get('bytes'))}"])
    return rows


def batching(m: dict) -> list[list[str]]:
    rows = []
    for key, label in (("poisson", "Poisson arrivals"), ("all_at_once", "all at once, equal lengths")):
        ok = [r for r in m.get(key, []) if r.get("status") == "ok"]
        if ok:
            rows.append([label, ", ".join(f"{html.escape(r['server'])} {fmt(r['output_throughput'], 'tok/s')} "
                                          f"(TTFT p99 {fmt(r.get('ttft_p99_ms'), 'ms')})" for r in ok)])
    return rows


def pruning(m: dict) -> list[list[str]]:
    ppl = {r["label"]: r.get("ppl_change") for r in m.get("quality", []) if r.get("status") == "ok"}
    return [[html.escape(r["label"]), f"decode {fmt(r['decode_x'], 'x')} dense (floor predicts "
             f"{fmt(r.get('predicted_decode_x'), 'x')}), perplexity {100 * ppl[r['label']]:+.1f}%"]
            for r in m.get("speed", []) if r.get("status") == "ok" and r.get("decode_x") and r["label"] in ppl
            and r["label"] != "dense"]


def parallelism(m: dict) -> list[list[str]]:
    rows = []
    if a := m.get("allreduce_fit"):
        rows.append(["all-reduce", f"latency {fmt(1e3 * a['latency_s'], 'ms')}, bus bandwidth "
                                   f"{fmt(a['busbw_gbps'], 'GB/s')} ({a['world_size']} ranks)"])
    if b := m.get("bubble"):
        rows.append(["pipeline bubble", ", ".join(f"{r['micro-batches']} micro-batch(es) {fmt(r['measured bubble'])} "
                                                  f"(formula {fmt(r['formula (S-1)/(M+S-1)'])})" for r in b)])
    if d := m.get("dp"):
        rows.append(["data-parallel replicas", html.escape(d.get("replicas against one process", ""))])
    return rows


def kernels(m: dict) -> list[list[str]]:
    ok = [r for r in m.get("attention", []) if r.get("status") == "ok" and r.get("x_vs_eager")]
    rows = []
    if ok:
        n = max(r["n"] for r in ok)
        best = max((r for r in ok if r["n"] == n), key=lambda r: r["x_vs_eager"])
        eager = next((r for r in ok if r["n"] == n and r["backend"] == "eager"), None)
        rows.append([f"attention at n={n:,}", f"{html.escape(best['backend'])} {fmt(best['x_vs_eager'], 'x')} eager, "
                     f"peak {fmt(best.get('peak_MiB'), 'MiB')}" + (f" vs {fmt(eager.get('peak_MiB'), 'MiB')}"
                                                                 if eager else "")])
    prec = [r for r in m.get("precision", []) if r.get("decode_ms")]

    def one(r: dict) -> str:
        ppl = f" (perplexity {100 * (r['ppl_vs_fp32'] - 1):+.2f}%)" if r.get("ppl_vs_fp32") else ""
        return f"{html.escape(r['precision'])} {fmt(r['decode_ms'], 'ms')}/token{ppl}"
    if prec:
        rows.append(["decode by precision", ", ".join(one(r) for r in prec)])
    return rows


def serving(m: dict) -> list[list[str]]:
    table = m.get("side_by_side", {}).get("table", [])
    return [[html.escape(r["metric"]), f"{fmt(r['in process'])} in process, {fmt(r['over HTTP'])} over HTTP"
             + (f" ({html.escape(r['over HTTP it is'])})" if r.get("over HTTP it is") else "")]
            for r in table[:5] if r.get("in process") is not None]


def case_study(m: dict) -> list[list[str]]:
    """Notebook 07: the final stage against the baseline, each ratio in words, and whether the bars were met."""
    if not m.get("final_stage"):
        return generic(m)
    rows = [["final stage", html.escape(str(m["final_stage"]))],
            ["output throughput", f"{fmt(m.get('throughput_ratio'), 'x')} the baseline's"],
            ["idle TTFT", f"{fmt(m.get('ttft_idle_ratio'), 'x')} lower than the baseline's"],
            ["TTFT under load", f"{fmt(m.get('ttft_loaded_ratio'), 'x')} lower than the baseline's"]]
    if m.get("ppl_delta_pct") is not None:
        rows.append(["perplexity change", f"{m['ppl_delta_pct']:+.2f}%"])
    rows.append(["the guide's bars", ("met" if m.get("passed") else "not all met") + (
        "" if m.get("asserted") else " (not asserted on this hardware)")])
    return rows


def ledger(m: dict) -> list[list[str]]:
    """Notebook 08: how many of the guide's claims got each verdict."""
    from labkit.course.claims.verdict import STATUSES

    counts = m.get("counts", {})
    order = [s for s in STATUSES if s in counts] + sorted(s for s in counts if s not in STATUSES)
    return [[html.escape(status), str(counts[status])] for status in order if counts[status]]


def generic(m: dict, limit: int = 8) -> list[list[str]]:
    """A lesson with no summary of its own: its first `limit` numbers, each key in words with its unit
    (labkit.core.tables.words: "ppl_delta_pct" -> "perplexity change (%)")."""
    from labkit.core.tables import words

    scal = [(k, v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return [[html.escape(words(k)), fmt(v)] for k, v in scal[:limit]]
