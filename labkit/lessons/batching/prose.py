"""Notebook 05's sentences, built from this run's numbers, so that no sentence can contradict the tables above it.

The notebook states its predictions in its text ("the engine should serve more than static batching where requests
arrive over time", "all at once its lead should shrink", "throughput stops following the rate above capacity");
each helper here says whether the prediction held in this run, with the numbers: ratios in words from the
per-round throughputs (labkit.core.bench.Ratio, labkit.core.units.than), inside the noise floor called
inconclusive, never a direction. "What this means" names only columns the shown tables have (`SERVER_VIEW`).
"""

from __future__ import annotations

from labkit.core.bench import NOISE_FLOOR, Ratio
from labkit.core.units import than
from labkit.lessons.batching.servers import SERVER_VIEW, engine_ratio


def _ok(rows: list[dict]) -> dict[str, dict]:
    return {r["server"]: r for r in rows if r.get("status") == "ok"}


def one_ratio_words(x: float, better: str, worse: str) -> str:
    """A single measured ratio (no rounds) in words: "2.50x lower", "1.30x higher" (as the inverse), or
    "inconclusive (1.03x, inside the noise floor of ±5%)"."""
    r = Ratio([x])
    if not r.conclusive:
        return f"inconclusive ({x:.2f}x, inside the noise floor of ±{r.noise:.0%})"
    return r.words(better, worse)


def held(ratio: Ratio | None) -> str:
    """Whether a prediction that the engine serves more (`ratio` > 1) held: "held", "did not hold" or "is not
    settled by this run", with the ratio's words."""
    if ratio is None:
        return "could not be checked (a server did not run)"
    words = ratio.words("higher", "lower")
    if not ratio.conclusive:
        return f"is not settled by this run: {words}"
    return f"{'held' if ratio.value > 1 else 'did not hold'}: {words}"


def prediction_line(rows: list[dict], trace: str, other: str = "static") -> str:
    """Trace 1's prediction (requests arriving over time with lengths that vary: the engine serves more output
    tokens/s than `other`), and whether it held."""
    return (f"The prediction for {trace}, the engine's output throughput above {other}'s, "
            f"{held(engine_ratio(rows, other))}.")


def itl_lines(rows: list[dict], budget: int) -> list[str]:
    """Each batching server's ITL p99 against its median, then the engine's spread against the others': chunked
    prefill (at most `budget` tokens a step) is meant to keep a new prompt from stalling running requests for a
    whole prefill; the last line says whether the engine's spread was lower here."""
    ok = _ok(rows)
    spread, out = {}, []
    for name in ("engine", "static", "hf-continuous"):
        r = ok.get(name, {})
        if r.get("itl_median_ms") and r.get("itl_p99_ms") is not None:
            spread[name] = r["itl_p99_ms"] / r["itl_median_ms"]
            out.append(f"{name}: ITL p99 {r['itl_p99_ms']:.0f} ms is {spread[name]:.1f}x its median "
                       f"({r['itl_median_ms']:.0f} ms)")
    others = [n for n in spread if n != "engine"]
    if "engine" not in spread or not others:
        return out
    vs = {n: Ratio([spread[n] / spread["engine"]]) for n in others}
    words = "; ".join(than(one_ratio_words(vs[n].value, "lower", "higher"), f"{n}'s ({spread[n]:.1f}x)")
                      for n in others)
    if all(v.conclusive and v.value > 1 for v in vs.values()):
        verdict = (f"That is what chunked prefill predicts: a new prompt enters at most {budget} tokens a step, so "
                   "running requests are not stalled for a whole prefill.")
    elif any(v.conclusive and v.value < 1 for v in vs.values()):
        verdict = (f"Chunked prefill ({budget} tokens a step) was expected to keep it the lowest; here it was not: "
                   "look at the prefill steps in the engine's batch figure, or try a smaller max_num_batched_tokens.")
    else:
        verdict = "Chunked prefill was expected to keep it the lowest; this run does not settle it."
    out.append(f"The engine's ITL p99/median ({spread['engine']:.1f}x) was {words}. {verdict}")
    return out


def queue_line(occ: dict, max_batch: int) -> str:
    """From the engine's batch over time (`occupancy`): whether requests waited, at how many of its steps and how
    many at once, and the batch it averaged: whether the offered load was above what it served."""
    if not occ["t"]:
        return "The engine ran no step (it was not among the servers): no queue to read."
    n = len(occ["t"])
    mean = sum(occ["seqs"]) / n
    waited = [w for w in occ["waiting"] if w > 0]
    if not waited:
        return (f"No request waited in the engine's replay (its batch averaged {mean:.1f} of {max_batch} "
                "sequences a step): it kept up with the offered load, so its throughput is the load's and the "
                "latencies tell the servers apart (a higher `rate` loads it more).")
    return (f"Requests waited at {len(waited) / n:.0%} of the engine's steps (up to {max(waited)} at once) and its "
            f"batch averaged {mean:.1f} of {max_batch} sequences a step: the offered load was above what it could "
            "start at those moments.")


def best_case_line(rows1: list[dict], rows2: list[dict], other: str = "static") -> str:
    """Trace 2's prediction (all at once, equal lengths: static batching's best case): the engine's lead over
    `other` is smaller than on trace 1. The lead's change is the ratio of the two traces' ratios, round by round
    where both have the same rounds; inside the noise it is not settled."""
    r1, r2 = engine_ratio(rows1, other), engine_ratio(rows2, other)
    if r1 is None or r2 is None:
        return f"The prediction for {other}'s best case could not be checked: the engine or {other} did not run."
    pairs = zip(r1.values, r2.values, strict=True) if len(r1.values) == len(r2.values) else [(r1.value, r2.value)]
    shift = Ratio([a / b for a, b in pairs])
    head = (f"The engine's output throughput against {other}'s: {r1.words('higher', 'lower')} on trace 1, "
            f"{r2.words('higher', 'lower')} all at once. The prediction, a smaller lead where {other} waits for "
            "nothing, ")
    if not shift.conclusive:
        return head + f"is not settled by this run (the lead's change: {shift.words('smaller', 'larger')})."
    if shift.value > 1:
        return head + f"held: the lead was {shift.value:.2f}x smaller."
    return (head + f"did not hold: the lead was {1 / shift.value:.2f}x larger, so waiting for a batch was not what "
            f"held {other} back on trace 1.")


def token_cost_lines(rows: list[dict], occ: dict | None, max_batch: int) -> list[str]:
    """What one output token cost each server over the whole trace (ms of the run per token), with the batch it
    ran: one request for sequential, up to `max_batch` for the batching servers, and for the engine the batch
    its replay averaged (`occupancy`)."""
    out = []
    for name, r in _ok(rows).items():
        if name == "sequential":
            batch = "one request at a time"
        elif name == "engine" and occ and occ["seqs"]:
            batch = f"a batch of {sum(occ['seqs']) / len(occ['seqs']):.1f} sequences on average (at most {max_batch})"
        else:
            batch = f"batches of up to {max_batch}"
        out.append(f"{name:14s} {1e3 / r['output_throughput']:7.1f} ms of the run per output token, {batch}")
    return out


def sweep_lines(rows: list[dict]) -> list[str]:
    """The rate sweep's prediction, server by server, between its lowest and highest rate: below capacity the
    output throughput follows the rate; above it, throughput grows less than the rate and p99 TTFT rises with the
    queue. Each line says which happened, from the numbers."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("status") == "ok":
            by.setdefault(r["server"], []).append(r)
    out = []
    for name, g in by.items():
        g = sorted(g, key=lambda r: r["rate"])
        if len(g) < 2:
            continue
        lo, hi = g[0], g[-1]
        if not (lo["output_throughput"] and lo["ttft_p99_ms"]):
            continue  # nothing served at the lowest rate: no factor to give
        load = hi["rate"] / lo["rate"]
        thr = hi["output_throughput"] / lo["output_throughput"]
        ttft = hi["ttft_p99_ms"] / lo["ttft_p99_ms"]
        head = (f"{name}: {load:g}x the rate ({lo['rate']:g} to {hi['rate']:g} requests/s) gave {thr:.2f}x the "
                f"output throughput and a p99 TTFT {one_ratio_words(ttft, 'higher', 'lower')}")
        grew = ("grew less than the rate" if thr > 1 + NOISE_FLOOR else
                "did not grow (inside the noise)" if thr >= 1 - NOISE_FLOOR else "fell")
        if thr >= load * (1 - NOISE_FLOOR):
            out.append(f"{head}: throughput followed the rate, so it kept up at {hi['rate']:g} requests/s.")
        elif Ratio([ttft]).conclusive and ttft > 1:
            out.append(f"{head}: throughput {grew} while requests queued, as predicted above its capacity"
                       + ("" if thr > 1 + NOISE_FLOOR else ": it was already at its capacity at the lower rate")
                       + ".")
        else:
            out.append(f"{head}: throughput {grew}, but TTFT did not rise, so no queue built up; in "
                       "a trace of a few requests the last ones' drain can hold throughput down.")
    return out


def _bound_line(ok: dict, occ: dict | None, max_batch: int) -> str | None:
    """Amdahl's bound from the sequential replay against the engine's factor over sequential."""
    s, e = ok.get("sequential"), ok.get("engine")
    if s is None or e is None:
        return None
    x = engine_ratio(list(ok.values()), "sequential")
    col = f"the '{SERVER_VIEW['throughput_x_vs_sequential']}' column" if "throughput_x_vs_sequential" in e else ""
    text = f"The engine's output throughput was {than(x.words('higher', 'lower'), 'sequential generate')}"
    text += f" ({col})" if col else ""
    if not s.get("prefill_share"):
        return text + "."
    text += (f". Batching shares a decode step's weight reads, not a prefill's work: prefills were "
             f"{s['prefill_share']:.0%} of the sequential server's busy time, so even free decode could give at most "
             f"{s['max_x_vs_sequential']:.1f}x its throughput (Amdahl's law)")
    bound = s.get("max_x_at_batch")
    if not bound:
        return text + "; a faster prefill (notebook 02) raises that ceiling, and notebook 07 stacks both."
    text += (f", and every decode step at a full batch of {max_batch}, at the step time the engine measured, "
             f"{bound:.1f}x. The engine's {x.value:.2f}x was ")
    mean = sum(occ["seqs"]) / len(occ["seqs"]) if occ and occ["seqs"] else None
    side = Ratio([x.value / bound])
    if not side.conclusive:
        text += "at that full-batch bound"
    elif side.value < 1:
        text += "below that full-batch bound" + (f": its batch averaged {mean:.1f} of {max_batch} sequences, as "
                                                 "requests arrive and leave" if mean and mean < max_batch else "")
    else:
        text += ("above that full-batch bound, which is an estimate: its prefill times come from the sequential "
                 "replay and its step time from the engine's, measured at different moments")
    return text + ". A faster prefill (notebook 02) raises the ceiling; notebook 07 stacks both."


def _tokens_line(ok: dict) -> str:
    """Whether every server gave sequential's greedy tokens (the table's 'same tokens' column)."""
    col = SERVER_VIEW["same_tokens_as_sequential"]
    same = {n: r["same_tokens_as_sequential"] for n, r in ok.items() if r.get("same_tokens_as_sequential") is not None}
    if not same:
        return "Sequential did not run, so no server's tokens were checked against it."
    off = {n: v for n, v in same.items() if v < 1}
    if not off:
        return (f"Every server gave the same greedy tokens as sequential generate (the '{col}' column), so the speeds "
                "above are for the same answers.")
    listed = ", ".join(f"{n} on {v:.0%} of the requests" for n, v in off.items())
    return (f"Not every server gave sequential's greedy tokens (the '{col}' column): {listed}. A faster server "
            "that changes the answers is not a speed-up until the difference is understood.")


def what_this_means(rows: list[dict], rows2: list[dict], occ: dict | None, max_batch: int) -> list[str]:
    """'What this means', each point built from this run's numbers: trace 1's prediction against static batching
    and how trace 2 (static's best case) came out, the bound the sequential replay puts on any batching against
    the engine's factor, and whether the servers kept sequential's tokens."""
    ok = _ok(rows)
    pts = [f"Continuous batching was predicted to serve more where requests arrive over time and want different "
           f"lengths (trace 1): against static batching the prediction {held(engine_ratio(rows, 'static'))}."]
    r2 = engine_ratio(rows2, "static")
    if r2 is not None:
        words = than(r2.words("higher", "lower"), "static's")
        pts[0] += f" All at once with equal lengths (static's best case) the engine's output throughput was {words}."
    pts += [p for p in (_bound_line(ok, occ, max_batch), _tokens_line(ok)) if p]
    return pts
