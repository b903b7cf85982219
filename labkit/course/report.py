"""Figures and the course's index page (reports/index.html): what a learner reads first after a run.

The index is headed by the claims ledger's summary and the case study's table, then the machine's headline
rates, then one short summary per lesson (numbers with units, from the lesson's latest record) with its figures
(click for full size), and a line for each lesson not run or not written yet.
"""

from __future__ import annotations

import html
from pathlib import Path

from labkit.core.records import atomic_write, reports_dir, staging_dir

# (notebook id, title, the record its summary reads)
LESSONS = (("00", "How to measure an LLM's speed", "00_baseline"),
           ("01", "What this machine can do", "hardware_profile"),
           ("02", "Quantization", "02_quantization"),
           ("03", "Pruning", "03_pruning"),
           ("04", "Parallelism", "04_parallelism"),
           ("05", "Continuous batching", "05_continuous_batching"),
           ("06", "Kernel swaps and memory", "06_kernels_and_memory"),
           ("07", "Case study: the guide's 13B stack", "07_case_study"),
           ("08", "The claims ledger", "08_claims_ledger"),
           ("09", "Serving over HTTP", "09_serving_over_http"))


def figures_dir(root: Path | None = None) -> Path:
    """<root>/figures; by default where a notebook's figures go now (staged during a course run, see
    labkit.core.records.staging_dir)."""
    d = (Path(root) if root is not None else (staging_dir() or reports_dir())) / "figures"
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_figure(fig, name: str) -> Path:
    """Save a matplotlib figure as reports/figures/<name>.png (the index links it) and return the path."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"figure name must be a plain file stem, got {name!r}")
    return atomic_write(figures_dir() / f"{name}.png",
                        write=lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


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


def fmt_bytes(n) -> str:
    if n is None:
        return "–"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return fmt(n / size, unit)
    return f"{n:,.0f} B"


def _table(rows: list[list[str]], head: list[str] | None = None) -> str:
    h = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>" if head else ""
    return "<table>" + h + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows) + "</table>"


# ---------------------------------------------------------------- one summary per lesson

def _s00(m: dict) -> list[list[str]]:
    return [["TTFT p50 (512-token prompt)", fmt(m.get("ttft_median_ms"), "ms")],
            ["TPOT p50", fmt(m.get("tpot_median_ms"), "ms")],
            ["output throughput, one request at a time", fmt(m.get("output_throughput"), "tok/s")],
            ["first request / steady state (E2E)", fmt(m.get("cold_over_warm_E2E"), "x")],
            ["noise floor (A against A)", fmt(100 * m["noise_floor"], "%") if m.get("noise_floor") else "–"]]


def _s01(m: dict) -> list[list[str]]:
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


def _s02(m: dict) -> list[list[str]]:
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


def _s05(m: dict) -> list[list[str]]:
    rows = []
    for key, label in (("poisson", "Poisson arrivals"), ("all_at_once", "all at once, equal lengths")):
        ok = [r for r in m.get(key, []) if r.get("status") == "ok"]
        if ok:
            rows.append([label, ", ".join(f"{html.escape(r['server'])} {fmt(r['output_throughput'], 'tok/s')} "
                                          f"(TTFT p99 {fmt(r.get('ttft_p99_ms'), 'ms')})" for r in ok)])
    return rows


def _s03(m: dict) -> list[list[str]]:
    ppl = {r["label"]: r.get("ppl_change") for r in m.get("quality", []) if r.get("status") == "ok"}
    return [[html.escape(r["label"]), f"decode {fmt(r['decode_x'], 'x')} dense (floor predicts "
             f"{fmt(r.get('predicted_decode_x'), 'x')}), perplexity {100 * ppl[r['label']]:+.1f}%"]
            for r in m.get("speed", []) if r.get("status") == "ok" and r.get("decode_x") and r["label"] in ppl
            and r["label"] != "dense"]


def _s04(m: dict) -> list[list[str]]:
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


def _s06(m: dict) -> list[list[str]]:
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


def _s09(m: dict) -> list[list[str]]:
    table = m.get("side_by_side", {}).get("table", [])
    return [[html.escape(r["metric"]), f"{fmt(r['in process'])} in process, {fmt(r['over HTTP'])} over HTTP"
             + (f" ({html.escape(r['over HTTP it is'])})" if r.get("over HTTP it is") else "")]
            for r in table[:5] if r.get("in process") is not None]


def _generic(m: dict, limit: int = 8) -> list[list[str]]:
    scal = [(k, v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return [[html.escape(k.replace("_", " ")), fmt(v)] for k, v in scal[:limit]]


SUMMARIES = {"00": _s00, "01": _s01, "02": _s02, "03": _s03, "04": _s04, "05": _s05, "06": _s06, "09": _s09}


def _latest_for(nb_id: str, experiment: str, reports: Path) -> dict | None:
    from labkit.core.records import latest, read_records

    rec = latest(experiment, reports / "results")
    if rec is None:  # a lesson may name its records otherwise; take its newest whose name starts with its id
        recs = [r for r in read_records(reports / "results") if r["experiment"].startswith(f"{nb_id}_")]
        rec = recs[-1] if recs else None
    return rec


def _lesson_sections(reports: Path) -> str:
    from labkit.course.runner import notebooks

    have = notebooks()
    figs = sorted(figures_dir(reports).glob("*.png"))
    parts = []
    for nb_id, title, experiment in LESSONS:
        head = f"<h3>{nb_id} · {html.escape(title)}</h3>"
        nb_html = reports / "notebooks" / f"{have[nb_id].stem}.html" if nb_id in have else None
        if nb_id not in have:
            parts.append(head + "<p class=meta>not written yet</p>")
            continue
        rec = _latest_for(nb_id, experiment, reports)
        if rec is None:
            parts.append(head + f"<p class=meta>not run yet: <code>python -m labkit course --only {nb_id}</code></p>")
            continue
        link = (f' · <a href="notebooks/{nb_html.name}">the executed notebook</a>' if nb_html and nb_html.exists()
                else "")
        summary = SUMMARIES.get(nb_id, _generic)(rec["metrics"])
        mine = [f for f in figs if f.name.startswith(f"{nb_id}_")]
        gallery = "".join(f'<a href="figures/{f.name}"><img src="figures/{f.name}" alt="{html.escape(f.stem)}" '
                          f'title="{html.escape(f.stem)} (click for full size)"></a>' for f in mine)
        parts.append(head + f"<p class=meta>{html.escape(rec['time'][:19])} · preset "
                     f"{html.escape(str(rec['config'].get('preset')))}{link}</p>" + _table(summary)
                     + (f"<div class=gallery>{gallery}</div>" if gallery else ""))
    return "".join(parts)


# ---------------------------------------------------------------- the case study and the ledger

CASE_STUDY = "07_case_study"
CASE_COLUMNS = (("stage", "stage", ""), ("ttft_idle_ms", "idle TTFT", "ms"), ("ttft_p50_ms", "TTFT p50 loaded", "ms"),
                ("output_throughput", "output", "tok/s"), ("throughput_x_prev", "x prev", "x"),
                ("guide_factor", "guide x", "x"))


def _case_study_section(reports: Path) -> str:
    """The latest case-study record as the guide-style table that heads the report (empty if none yet)."""
    from labkit.core.records import latest

    rec = latest(CASE_STUDY, reports / "results")
    if rec is None:
        return ""
    m = rec["metrics"]
    ppl = {q["stage"]: q["perplexity"] for q in m.get("quality", [])}
    head = [t + (f" ({u})" if u and u != "x" else "") for _, t, u in CASE_COLUMNS] + ["perplexity"]
    body = []
    for r in m.get("stages", []):
        if r.get("status", "ok") != "ok":  # a stage that could not run here: its reason in the row
            body.append([html.escape(r["stage"]), html.escape(r["status"])] + [""] * (len(head) - 2))
            continue
        body.append([fmt(r.get(k), u if u == "x" else "") if k != "stage" else html.escape(r[k])
                     for k, _, u in CASE_COLUMNS] + [fmt(ppl.get(r["stage"]))])
    if m.get("asserted"):
        state = ("passed" if m.get("asserted_passed", m.get("passed")) else "FAILED") + (
            f", asserted: {' and '.join(m['asserted_ratios'])}" if m.get("asserted_ratios") else "")
    else:
        state = "not asserted on this hardware"
    where = f"{rec['time'][:19]} · {rec['fingerprint'].get('cpu')} · preset {rec['config'].get('preset')}"
    return (f"<h2>Case study: the guide's 13B stack on this machine ({state})</h2>"
            f"<p>{html.escape(str(m.get('message', '')))}</p><p class=meta>{html.escape(where)}</p>"
            + _table(body, head))


def _ledger_section(reports: Path) -> str:
    """The claims ledger's summary (notebook 08's record), when there is one."""
    from labkit.core.records import latest

    rec = latest("08_claims_ledger", reports / "results")
    if rec is None:
        return ""
    m = rec["metrics"]
    counts = m.get("counts", {})
    rows = [[html.escape(v["claim"]), html.escape(v["status"]), html.escape(v.get("evidence", ""))]
            for v in m.get("verdicts", [])]
    summary = ", ".join(f"{n} {html.escape(s)}" for s, n in counts.items() if n)
    return (f"<h2>The guide's claims on this machine</h2><p>{summary}</p>"
            f"<details><summary>every claim</summary>{_table(rows, ['claim', 'status', 'evidence'])}</details>")


def write_index(reports: Path | None = None, run=None) -> Path:
    """reports/index.html: ledger and case study first, the machine, each lesson's summary and figures."""
    reports = Path(reports) if reports is not None else reports_dir()
    reports.mkdir(parents=True, exist_ok=True)
    return atomic_write(reports / "index.html", _page(reports, run))


def write_single_file(reports: Path | None = None, out: Path | None = None) -> Path:
    """One self-contained HTML file to send to someone: the index with every figure embedded (data: URIs), no
    link that needs another file, the machine's fingerprint and the date. Default: reports/course-report.html."""
    import base64
    import datetime as dt
    import json
    import re

    from labkit.core.hardware import fingerprint

    reports = Path(reports) if reports is not None else reports_dir()
    page = _page(reports, None)

    def embed(m: re.Match) -> str:
        f = reports / "figures" / m.group(1)
        data = base64.b64encode(f.read_bytes()).decode() if f.exists() else ""
        return f'src="data:image/png;base64,{data}"'

    page = re.sub(r'src="figures/([^"]+)"', embed, page)
    page = re.sub(r'<a href="(figures|notebooks)/[^"]*">(.*?)</a>', r"\2", page, flags=re.S)  # nothing beside it
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    fp = html.escape(json.dumps(fingerprint(), indent=1))
    page = page.replace("<h1>Local LLM speed course: report</h1>",
                        f"<h1>Local LLM speed course: report</h1><p class=meta>made {stamp}</p>", 1)
    page = page.replace("</body>", f"<h2>Fingerprint</h2><pre>{fp}</pre></body>", 1)
    return atomic_write(Path(out) if out else reports / "course-report.html", page)


def _page(reports: Path, run) -> str:
    from labkit.core.hardware import describe, fingerprint

    status = ""
    if run is not None:
        rows = [[html.escape(r.name), "ok" if not r.error else "FAILED", fmt(r.seconds, "s"),
                 html.escape(r.error or "")] for r in run.runs]
        total = sum(r.seconds for r in run.runs)
        status = (f"<h2>This run (preset {html.escape(run.preset)}, {fmt(total / 60, 'min')})</h2>"
                  + _table(rows, ["notebook", "state", "time", "error"]))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>labkit course report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}
.meta{{color:#666}}.gallery img{{width:48%;margin:1%;border:1px solid #ddd}}</style>
</head><body><h1>Local LLM speed course: report</h1>
{_ledger_section(reports)}{_case_study_section(reports)}<h2>Machine</h2><pre>{html.escape(describe(fingerprint()))}</pre>
{status}<h2>Lessons</h2>{_lesson_sections(reports)}</body></html>"""
    return page
