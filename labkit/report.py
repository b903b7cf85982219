"""Figures and the course's index page (reports/index.html)."""

from __future__ import annotations

import html
from pathlib import Path

from labkit.records import atomic_write, reports_dir, staging_dir


def figures_dir(root: Path | None = None) -> Path:
    """<root>/figures; by default where a notebook's figures go now (staged during a course run, see
    labkit.records.staging_dir)."""
    d = (Path(root) if root is not None else (staging_dir() or reports_dir())) / "figures"
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_figure(fig, name: str) -> Path:
    """Save a matplotlib figure as reports/figures/<name>.png (the index links it) and return the path."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"figure name must be a plain file stem, got {name!r}")
    return atomic_write(figures_dir() / f"{name}.png",
                        write=lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _summary_rows(reports: Path, limit: int = 14) -> list[str]:
    """One small table per experiment: the scalar metrics of its latest record."""
    from labkit.records import read_records

    latest: dict[str, dict] = {}
    for r in read_records(reports / "results"):
        latest[r["experiment"]] = r
    parts = []
    for name, r in sorted(latest.items()):
        scal = [(k, v) for k, v in r["metrics"].items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
        if not scal:
            continue
        cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in scal[:limit])
        more = f"<tr><td colspan=2>… {len(scal) - limit} more in the record</td></tr>" if len(scal) > limit else ""
        parts.append(f"<h3>{html.escape(name)}</h3><p class=meta>{html.escape(r['time'])} · "
                     f"{html.escape(str(r['fingerprint'].get('cpu')))}</p><table>{cells}{more}</table>")
    return parts


CASE_STUDY = "07_case_study"
CASE_COLUMNS = (("stage", "stage"), ("ttft_idle_ms", "idle TTFT (ms)"), ("ttft_p50_ms", "TTFT p50 loaded (ms)"),
                ("output_throughput", "output tok/s"), ("throughput_x_prev", "x prev"), ("guide_factor", "guide x"))


def _case_study_section(reports: Path) -> str:
    """The latest case-study record as the guide-style table that heads the report (empty if none yet)."""
    from labkit.records import latest

    rec = latest(CASE_STUDY, reports / "results")
    if rec is None:
        return ""
    m = rec["metrics"]
    ppl = {q["stage"]: q["perplexity"] for q in m.get("quality", [])}
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in CASE_COLUMNS) + "<th>perplexity</th>"
    body = ""
    for r in m.get("stages", []):
        if r.get("status", "ok") != "ok":  # a stage that could not run here: its reason across the row
            body += (f"<tr><td>{html.escape(r['stage'])}</td>"
                     f"<td colspan={len(CASE_COLUMNS)}>{html.escape(r['status'])}</td></tr>")
            continue
        cells = [_fmt(r.get(k, "")) for k, _ in CASE_COLUMNS] + [_fmt(ppl.get(r["stage"], ""))]
        body += "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
    state = ("passed" if m.get("passed") else "FAILED") if m.get("asserted") else "not asserted on this hardware"
    where = f"{rec['time']} · {rec['fingerprint'].get('cpu')} · preset {rec['config'].get('preset')}"
    return (f"<h2>Case study: the guide's 13B stack on this machine ({state})</h2>"
            f"<p>{html.escape(str(m.get('message', '')))}</p><p class=meta>{html.escape(where)}</p>"
            f"<table><tr>{head}</tr>{body}</table>")


def write_index(reports: Path | None = None, run=None) -> Path:
    """reports/index.html: the executed notebooks, their figures and the latest result of each experiment."""
    from labkit.hardware import describe, fingerprint

    reports = Path(reports) if reports is not None else reports_dir()
    reports.mkdir(parents=True, exist_ok=True)
    nb_dir = reports / "notebooks"
    items = []
    for p in sorted(nb_dir.glob("*.ipynb")) if nb_dir.exists() else []:
        h = p.with_suffix(".html")
        link = f'<a href="notebooks/{h.name}">{html.escape(p.stem)}</a>' if h.exists() else html.escape(p.stem)
        items.append(f'<li>{link} (<a href="notebooks/{p.name}">ipynb</a>)</li>')
    status = ""
    if run is not None:
        rows = "".join(
            f"<tr><td>{html.escape(r.name)}</td><td>{'ok' if not r.error else 'FAILED'}</td>"
            f"<td>{r.seconds:.0f} s</td><td>{html.escape(r.error or '')}</td></tr>" for r in run.runs)
        status = f"<h2>This run (preset {html.escape(run.preset)})</h2><table>{rows}</table>"
    figs = "".join(f'<figure><img src="figures/{f.name}" width=480><figcaption>{html.escape(f.stem)}'
                   f"</figcaption></figure>" for f in sorted(figures_dir(reports).glob("*.png")))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>labkit course report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px}}figure{{display:inline-block;margin:8px}}.meta{{color:#666}}</style>
</head><body><h1>Local LLM speed course: report</h1>
{_case_study_section(reports)}<h2>Machine</h2><pre>{html.escape(describe(fingerprint()))}</pre>
{status}<h2>Executed notebooks</h2><ul>{''.join(items) or '<li>none yet</li>'}</ul>
<h2>Results (latest record of each experiment)</h2>{''.join(_summary_rows(reports)) or '<p>none yet</p>'}
<h2>Figures</h2>{figs or '<p>none yet</p>'}</body></html>"""
    return atomic_write(reports / "index.html", page)
