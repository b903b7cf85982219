"""Figures and the course's index page (reports/index.html): what a learner reads first after a run.

The index is headed by the claims ledger's summary and the case study's table, then the machine's headline
rates, then one short summary per lesson (numbers with units, from the lesson's latest record) with its figures
(click for full size), and a line for each lesson not run or not written yet.
"""

from __future__ import annotations

import html
from pathlib import Path

from labkit.core.records import atomic_write, latest, reports_dir, staging_dir
from labkit.course import catalog
from labkit.course.summaries import fmt, fmt_bytes

__all__ = ["fmt", "fmt_bytes", "figures_dir", "save_figure", "write_index", "write_single_file"]


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


# ---------------------------------------------------------------- the lessons

def _table(rows: list[list[str]], head: list[str] | None = None) -> str:
    h = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>" if head else ""
    return "<table>" + h + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows) + "</table>"


def _lesson_sections(reports: Path) -> str:
    """One section per lesson of the catalog: its main record's summary and its figures, or why there is none."""
    figs = sorted(figures_dir(reports).glob("*.png"))
    parts = []
    for les in catalog.LESSONS:
        head = f"<h3>{les.id} · {html.escape(les.title)}</h3>"
        if not les.path.exists():
            parts.append(head + "<p class=meta>not written yet</p>")
            continue
        rec = latest(les.record, reports / "results")
        if rec is None:
            parts.append(head + f"<p class=meta>not run yet: <code>python -m labkit course --only {les.id}</code></p>")
            continue
        nb_html = reports / "notebooks" / f"{les.notebook}.html"
        link = f' · <a href="notebooks/{nb_html.name}">the executed notebook</a>' if nb_html.exists() else ""
        mine = [f for f in figs if f.name.startswith(f"{les.id}_")]
        gallery = "".join(f'<a href="figures/{f.name}"><img src="figures/{f.name}" alt="{html.escape(f.stem)}" '
                          f'title="{html.escape(f.stem)} (click for full size)"></a>' for f in mine)
        parts.append(head + f"<p class=meta>{html.escape(rec['time'][:19])} · preset "
                     f"{html.escape(str(rec['config'].get('preset')))}{link}</p>" + _table(les.summary(rec["metrics"]))
                     + (f"<div class=gallery>{gallery}</div>" if gallery else ""))
    return "".join(parts)


# ---------------------------------------------------------------- the case study and the ledger

def _latest_of(lesson_id: str, reports: Path) -> dict | None:
    """The newest main record of a lesson (None if it has not run, or this course has no such lesson)."""
    les = catalog.find(lesson_id)
    return latest(les.record, reports / "results") if les else None


CASE_COLUMNS = (("stage", "stage", ""), ("ttft_idle_ms", "idle TTFT", "ms"), ("ttft_p50_ms", "TTFT p50 loaded", "ms"),
                ("output_throughput", "output", "tok/s"), ("throughput_x_prev", "x prev", "x"),
                ("guide_factor", "guide x", "x"))


def _case_study_section(reports: Path) -> str:
    """The latest case-study record as the guide-style table that heads the report (empty if none yet)."""
    rec = _latest_of("07", reports)
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
    rec = _latest_of("08", reports)
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
