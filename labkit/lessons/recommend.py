"""Which path to use here, in sentences built from notebook 02's speed table (and the peers' rows when a
`python -m labkit peers` record exists): one answer for decode-bound traffic (one stream, long answers: the time per
token decides) and one for prefill-bound traffic (long prompts, short answers: the time to the first token decides).

A learner finishing the lesson asks "so which one do I use?"; the answer must come from this machine's numbers and
say when the numbers cannot tell two paths apart. Each ranking compares the paths' ratios against fp32 (each the
median of per-round ratios measured side by side), and a winner inside the noise floor (labkit.core.bench's, or
the A-against-A spread notebook 00 measured, whichever is larger) is called inconclusive with both names given.
The quality price of the winner comes from the same record's perplexity rows. `labkit.course.advise` uses the
same rankings for its recommendation.
"""

from __future__ import annotations

import math

from labkit.core.bench import NOISE_FLOOR

PHASES = {  # phase -> (traffic words, time column, ratio-vs-fp32 column, unit)
    "decode": ("decode-bound traffic (one stream, long answers: time per token decides)",
               "decode_ms_per_token", "decode_x_vs_fp32", "ms/token"),
    "prefill": ("prefill-bound traffic (long prompts, short answers: time to first token decides)",
                "prefill_ms", "prefill_x_vs_fp32", "ms prefill"),
}
PEER_COLUMNS = {"decode": "decode tok/s", "prefill": "prefill tok/s"}


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _rows(table) -> list[dict]:
    """A DataFrame or a list of dicts (a record's rows) as a list of dicts."""
    if table is None:
        return []
    return table.to_dict("records") if hasattr(table, "to_dict") else list(table)


def ranked(speed, phase: str) -> list[dict]:
    """02's timed rows (status ok, with a time and a ratio against fp32 for `phase`), fastest first."""
    _, time_col, ratio_col, _ = PHASES[phase]
    timed = [r for r in _rows(speed) if r.get("status") == "ok" and _num(r.get(time_col)) and _num(r.get(ratio_col))]
    return sorted(timed, key=lambda r: -r[ratio_col])


def margin(a: float, b: float, noise: float = NOISE_FLOOR) -> tuple[float, bool]:
    """How much faster `a` is than `b` (both "x faster than fp32", or both rates): (ratio, conclusive)."""
    ratio = a / b
    return ratio, abs(ratio - 1) > noise


def quality_words(method: str, quality) -> str:
    """What `method` costs in quality, from 02's quality rows (perplexity on the trained model against fp32)."""
    base = method.removesuffix("+compile")
    row = next((r for r in _rows(quality) if r.get("method") == base), None)
    if row is None:
        return "its quality was not measured here (no quality row)"
    ppl = _num(row.get("ppl_vs_fp32"))
    if row.get("status") != "ok" or ppl is None:
        return f"its quality was not measured here ({row.get('status', 'no perplexity')})"
    agree = _num(row.get("token_agreement"))
    tail = f", {agree:.0%} of greedy tokens agree with fp32" if agree is not None else ""
    return f"it costs {100 * (ppl - 1):+.1f}% perplexity against fp32 on the trained model{tail}"


def phase_line(speed, quality, phase: str, noise: float = NOISE_FLOOR) -> str:
    """One sentence: the path to use for `phase`'s traffic, by how much it leads the next, what it costs."""
    words, time_col, ratio_col, unit = PHASES[phase]
    rows = ranked(speed, phase)
    if not rows:
        return f"For {words}: no path was timed here, so there is no answer (rerun notebook 02)."
    best = rows[0]
    head = (f"For {words}: use {best['method']} ({best[time_col]:,.1f} {unit}, "
            f"{best[ratio_col]:.2f}x fp32's speed)")
    if len(rows) == 1:
        return f"{head}, the only path timed here; {quality_words(best['method'], quality)}."
    second = rows[1]
    ratio, conclusive = margin(best[ratio_col], second[ratio_col], noise)
    if not conclusive:
        return (f"For {words}: inconclusive between {best['method']} and {second['method']} ({ratio:.2f}x apart, "
                f"inside the noise floor of ±{noise:.0%}): either; {best['method']}: "
                f"{quality_words(best['method'], quality)}; {second['method']}: "
                f"{quality_words(second['method'], quality)}.")
    return f"{head}, {ratio:.2f}x faster than the next, {second['method']}; {quality_words(best['method'], quality)}."


def peer_line(peers, phase: str, noise: float = NOISE_FLOOR, said: list[str] | None = None) -> str | None:
    """The peers record's fastest row for `phase` beside labkit's fastest in the same record (timed in the same
    rotating rounds, ratio of their medians), or None without a peers table. `said`: the record's own sentences;
    where one compares the same best against best (labkit.lessons.peers.best_lines: the median of per-round
    ratios, its noise call), that verdict is the one given, so notebook 02 and `labkit peers` say the same."""
    col = PEER_COLUMNS[phase]
    ok = [r for r in _rows(peers) if r.get("status") == "ok" and _num(r.get(col))]
    if not ok:
        return None if peers is None else f"peers, {phase}: no row was timed in the peers record"
    ours = [r for r in ok if str(r.get("path", "")).startswith("labkit ")]
    theirs = [r for r in ok if r not in ours]
    best_ours = max(ours, key=lambda r: r[col], default=None)
    best_peer = max(theirs, key=lambda r: r[col], default=None)
    if best_ours is None or best_peer is None:
        only = best_ours or best_peer
        return f"peers, {phase}: only {only['path']} ran ({only[col]:,.1f} tok/s); nothing to compare it with"
    ratio, conclusive = margin(best_peer[col], best_ours[col], noise)
    def speed(r) -> str:  # the decode rows carry their floor (labkit.lessons.peer_verdicts.floor_fields)
        frac = _num(r.get("fraction of floor")) if phase == "decode" else None
        return f"{r['path']} {r[col]:,.1f} tok/s" + (f" ({frac:.0%} of its decode floor)" if frac else "")

    pair = f"{speed(best_peer)}, {speed(best_ours)}"
    head = f"{phase}, best against best: "
    own = next((x[len(head):] for x in said or () if x.startswith(head)), None)
    if own is not None and own.startswith(f"{best_ours['path']} is ") and f" {best_peer['path']}" in own:
        return f"peers, {phase}: {own}: the median of the peers run's per-round ratios; its medians: {pair}"
    if not conclusive:
        return f"peers, {phase}: inconclusive ({pair}: {ratio:.2f}x apart, inside ±{noise:.0%})"
    lead, by = (best_peer, ratio) if ratio > 1 else (best_ours, 1 / ratio)
    return f"peers, {phase}: {lead['path']} leads by {by:.2f}x ({pair}; same rounds, ratio of medians)"


def noise_floor(root=None) -> float:
    """The larger of bench's default noise floor and the A-against-A spread notebook 00 measured, if stored."""
    from labkit.core.records import latest

    rec = latest("00_baseline", root)
    measured = _num((rec or {}).get("metrics", {}).get("noise_floor"))
    return max(NOISE_FLOOR, measured or 0.0)


def lines(speed, quality=None, peers=None, noise: float = NOISE_FLOOR, said: list[str] | None = None) -> list[str]:
    """Notebook 02's answer, decode-bound then prefill-bound, each followed by the peers' line when a peers table
    is given (`said`: the peers record's sentences, `peer_line`)."""
    out = []
    for phase in PHASES:
        out.append(phase_line(speed, quality, phase, noise))
        if (p := peer_line(peers, phase, noise, said)) is not None:
            out.append(f"  {p}")
    return out


def for_notebook(speed, quality, root=None) -> list[str]:
    """What notebook 02 prints: `lines` with the stored peers record (if any) and the measured noise floor, and a
    note saying how to add the peers when there is no record."""
    from labkit.lessons import peers as peer_lesson

    table, head = peer_lesson.latest_lines(root)
    out = lines(speed, quality, table, noise_floor(root), said=head)
    if table is None:
        out.append("  peers: no record yet; `python -m labkit peers` puts llama.cpp, CTranslate2, OpenVINO GenAI and "
                   "ONNX Runtime GenAI beside these")
    else:
        out.append(f"  peers record: {head[len(peer_lesson.INSTALL)]}")
    return out
