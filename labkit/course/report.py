"""Figures and the course's index page (reports/index.html): what a learner reads first after a run.

The index is headed by the claims ledger's counts and the case study's table, then the machine, then one section
per lesson: the question it asks and its numbers (with units, from its latest record) in one paragraph, its
figures one per row at the column's width (click for full size), or a line saying it has not run. Lesson 08's
section holds the ledger itself, open: every claim, its verdict and the evidence. Metric keys never show: labels
come from the summaries or from labkit.core.tables.words ("ppl_delta_pct" -> "perplexity change (%)").
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

def _table(rows: list[list[str]], head: list[str] | None = None, cls: str = "") -> str:
    h = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>" if head else ""
    c = f" class={cls}" if cls else ""
    return (f"<table{c}>" + h + "".join("<tr>" + "".join(f"<td>{x}</td>" for x in r) + "</tr>" for r in rows)
            + "</table>")


def _paragraph(les: catalog.Lesson, rows: list[list[str]]) -> str:
    """The lesson's question and its numbers in one paragraph: "label: value; label: value." (rows are escaped
    HTML already, as the summaries write them)."""
    ask = QUESTIONS.get(les.id, "")
    found = "; ".join(f"<b>{label}</b>: {text}" for label, text in rows if text != "–")  # not in this record
    return f"<p class=summary>{html.escape(ask)}{' On this machine: ' + found + '.' if found else ''}</p>"


def _gallery(figs: list[Path]) -> str:
    """The figures one per row, each at the column's width at most (never shrunk below it), a click for full size."""
    return "".join(f'<figure><a href="figures/{f.name}"><img src="figures/{f.name}" alt="{html.escape(f.stem)}" '
                   f'title="{html.escape(f.stem)} (click for full size)"></a>'
                   f"<figcaption>{html.escape(f.stem.split('_', 1)[-1].replace('_', ' '))}</figcaption></figure>"
                   for f in figs)


def _lesson_sections(reports: Path) -> str:
    """One section per lesson of the catalog: its summary paragraph next to its figures, or why there is none;
    lesson 08's holds the claims ledger."""
    figs = sorted(figures_dir(reports).glob("*.png"))
    parts = []
    for les in catalog.LESSONS:
        head = f'<section id="lesson-{les.id}"><h3>{les.id} · {html.escape(les.title)}</h3>'
        if not les.path.exists():
            parts.append(head + "<p class=meta>not written yet</p></section>")
            continue
        rec = latest(les.record, reports / "results")
        if rec is None:
            parts.append(head + f"<p class=meta>not run yet: <code>python -m labkit course --only {les.id}</code>"
                                "</p></section>")
            continue
        nb_html = reports / "notebooks" / f"{les.notebook}.html"
        link = f' · <a href="notebooks/{nb_html.name}">the executed notebook</a>' if nb_html.exists() else ""
        mine = [f for f in figs if f.name.startswith(f"{les.id}_")]
        body = _ledger(rec) if les.id == LEDGER_LESSON else _paragraph(les, les.summary(rec["metrics"]))
        parts.append(head + f"<p class=meta>{html.escape(rec['time'][:19])} · preset "
                     f"{html.escape(str(rec['config'].get('preset')))}{link}</p>{body}{_gallery(mine)}</section>")
    return "".join(parts)


# ---------------------------------------------------------------- the case study and the ledger

LEDGER_LESSON = "08"
QUESTIONS = {  # what each lesson asks, the first sentence of its paragraph on the index
    "00": "How to time an LLM: TTFT, TPOT and throughput as vLLM's benchmark defines them, the cold start, and the "
          "noise floor below which a difference means nothing.",
    "01": "What this machine can do: its memory bandwidth and matrix-multiply rates, and how far a baseline decode "
          "and prefill are from the roofline floors they give.",
    "02": "Fewer bits per weight: how much faster batch-1 decode gets, and how much perplexity each method costs.",
    "03": "Pruning: which cuts make decode faster on this machine, and what they cost in perplexity.",
    "04": "Splitting a model over ranks (tensor, pipeline, data parallelism): what the collectives cost here.",
    "05": "Serving many requests: continuous batching against static batching and one request at a time.",
    "06": "Attention kernels, torch.compile and precision: the speed and memory of each, at growing lengths.",
    "07": "The guide's 13B stack (INT8, continuous batching, fast attention) applied stage by stage on this machine.",
    "08": "Every claim of the guide, judged from the records the other lessons stored.",
    "09": "The same engine over HTTP: what the server, JSON and streaming add to each request.",
}


def _latest_of(lesson_id: str, reports: Path) -> dict | None:
    """The newest main record of a lesson (None if it has not run, or this course has no such lesson)."""
    les = catalog.find(lesson_id)
    return latest(les.record, reports / "results") if les else None


CASE_COLUMNS = (("stage", "stage", ""), ("ttft_idle_ms", "idle TTFT", "ms"), ("ttft_p50_ms", "TTFT p50 loaded", "ms"),
                ("output_throughput", "output", "tok/s"), ("throughput_x_prev", "vs the stage before", "x"),
                ("guide_factor", "the guide's factor", "x"))


def _case_study_section(reports: Path) -> str:
    """The latest case-study record as the guide-style table that heads the report (empty if none yet)."""
    rec = _latest_of("07", reports)
    if rec is None:
        return ""
    m = rec["metrics"]
    ppl = {q["stage"]: q for q in m.get("quality", [])}
    head = [t + (f" ({u})" if u and u != "x" else "") for _, t, u in CASE_COLUMNS] + [
        "perplexity", "perplexity change (%)"]
    body = []
    for r in m.get("stages", []):
        if r.get("status", "ok") != "ok":  # a stage that could not run here: its reason in the row
            body.append([html.escape(r["stage"]), html.escape(r["status"])] + [""] * (len(head) - 2))
            continue
        body.append([fmt(r.get(k), u if u == "x" else "") if k != "stage" else html.escape(r[k])
                     for k, _, u in CASE_COLUMNS] + [fmt(ppl.get(r["stage"], {}).get(k)) for k in (
                         "perplexity", "ppl_delta_pct")])
    if m.get("asserted"):
        state = ("passed" if m.get("asserted_passed", m.get("passed")) else "FAILED") + (
            f", asserted: {' and '.join(m['asserted_ratios'])}" if m.get("asserted_ratios") else "")
    else:
        state = "not asserted on this hardware"
    where = f"{rec['time'][:19]} · {rec['fingerprint'].get('cpu')} · preset {rec['config'].get('preset')}"
    return (f"<h2>Case study: the guide's 13B stack on this machine ({state})</h2>"
            f"<p>{html.escape(str(m.get('message', '')))}</p><p class=meta>{html.escape(where)}</p>"
            + _table(body, head))


def _counts_line(m: dict) -> str:
    """"5 reproduced, 2 partly reproduced, ..." in the ledger's order of statuses (a record stores keys sorted)."""
    from labkit.course.claims.verdict import STATUSES

    counts = m.get("counts", {})
    order = [s for s in STATUSES if s in counts] + sorted(s for s in counts if s not in STATUSES)
    return ", ".join(f"{counts[s]} {html.escape(s)}" for s in order if counts[s])


def _ledger(rec: dict) -> str:
    """Notebook 08's record as the ledger, open: the verdict counts in a sentence, then every claim with the
    guide's words, its verdict, the guide's figure, what was measured and the evidence."""
    from labkit.course.claims.verdict import CLAIMS

    m = rec["metrics"]
    rows = []
    for v in m.get("verdicts", []):
        claim = CLAIMS.get(v.get("claim"))
        rows.append([html.escape(str(v.get("claim", ""))), html.escape(claim.words if claim else ""),
                     f"<b>{html.escape(str(v.get('status', '')))}</b>", html.escape(str(v.get("guide") or "")),
                     html.escape(str(v.get("measured") or "")), html.escape(str(v.get("evidence") or ""))])
    return (f"<p class=summary>{html.escape(QUESTIONS[LEDGER_LESSON])} The verdicts: {_counts_line(m)}.</p>"
            + _table(rows, ["claim", "the guide says", "verdict", "the guide's figure", "measured here", "evidence"],
                     cls="claims"))


def _ledger_section(reports: Path) -> str:
    """The claims ledger's counts at the head of the page (notebook 08's record), when there is one; the table is
    in lesson 08's section."""
    rec = _latest_of(LEDGER_LESSON, reports)
    if rec is None:
        return ""
    return (f"<h2>The guide's claims on this machine</h2><p>{_counts_line(rec['metrics'])}. "
            f'Every claim with its evidence: <a href="#lesson-{LEDGER_LESSON}">the ledger</a>.</p>')


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


def _advice_section(reports: Path) -> str:
    """`python -m labkit advise` on this run's records (course.advise): what to run on this machine, from the
    lessons' measurements, with what was not measured and the command that measures it."""
    from labkit.course import advise

    if not (reports / "results").exists():
        return ""
    try:
        lines = advise.advise(root=reports / "results").lines
    except Exception as e:  # the page still shows every lesson; the reason is shown instead of the advice
        lines = [f"no recommendation: {type(e).__name__}: {e}"]
    return ("<h2>What to run on this machine</h2><pre>" + html.escape("\n".join(lines)) + "</pre>"
            "<p class=meta>From the latest records (python -m labkit advise --help for a model, users, TTFT).</p>")


def _page(reports: Path, run) -> str:
    from labkit.core.hardware import describe, fingerprint

    status = ""
    if run is not None:
        def others(r) -> str:
            share = getattr(r, "others_cpu_share", None)
            return "" if share is None else f"{share:.0%}"

        rows = [[html.escape(r.name), "ok" if not r.error else "FAILED", fmt(r.seconds, "s"),
                 fmt(getattr(r, "estimate_s", None), "s"), html.escape(getattr(r, "estimate_source", "") or ""),
                 others(r), html.escape(r.error or "")] for r in run.runs]
        total = sum(r.seconds for r in run.runs)
        status = (f"<h2>This run (preset {html.escape(run.preset)}, {fmt(total / 60, 'min')})</h2>"
                  + _table(rows, ["notebook", "state", "time", "estimate", "estimated from", "CPU used by others",
                                  "error"]))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>labkit course report</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em;line-height:1.4}}
table{{border-collapse:collapse;margin:.5em 0;display:block;overflow-x:auto;font-size:.92em}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}}
table.claims td:nth-child(2),table.claims td:nth-child(6){{min-width:14em}}
.meta{{color:#666}}.summary{{margin:.4em 0 .8em}}section{{margin-bottom:2em}}
figure{{margin:.8em 0}}figure img{{display:block;max-width:100%;height:auto;border:1px solid #ddd}}
figcaption{{color:#666;font-size:.85em}}</style>
</head><body><h1>Local LLM speed course: report</h1>
{_advice_section(reports)}{_ledger_section(reports)}{_case_study_section(reports)}<h2>Machine</h2><pre>{html.escape(describe(fingerprint()))}</pre>
{status}<h2>Lessons</h2>{_lesson_sections(reports)}</body></html>"""
    return page
