"""Notebook 07's "What this means" and "Try this", built from this run's stage rows, so that no sentence can
contradict the table beside it on another machine (a CPU without int8 units, a GPU, a busy host): which stage paid
off is read from the measured factors, where the fused attention's gain shows is read from its two factors, and
each Try-this line names what this run picked or measured.
"""

from __future__ import annotations

import math

from labkit.core.units import fmt_bytes
from labkit.lessons.casestudy.stages import KEEP_ABOVE, final_stage

NOISE = KEEP_ABOVE - 1  # a factor within 5% of 1 is no change (the noise the stack's own keep-rule uses)


def factor_words(x: float | None, better: str, worse: str) -> str:
    """A stage's factor over the stage before in words: "1.66x higher", "1.30x lower", "no change (1.02x, within
    5%)"; `better` for x > 1 (the factor's good direction), `worse` as the inverse."""
    if x is None or x != x:
        return "not measured"
    if abs(x - 1) <= NOISE:
        return f"no change ({x:.2f}x, within {NOISE:.0%})"
    return f"{x:.2f}x {better}" if x > 1 else f"{1 / x:.2f}x {worse}"


def _stage(rows: list[dict], name: str) -> dict | None:
    return next((r for r in rows if r["stage"] == name and r.get("status", "ok") == "ok"), None)


def stack_line(rows: list[dict], int8_units: bool) -> str:
    """Which stage paid off most here, by throughput and by idle TTFT, and INT8's share read with this machine's
    int8 units in mind."""
    ok = [r for r in rows[1:]
          if r.get("status", "ok") == "ok" and r.get("throughput_x_prev") and not r.get("best_here")]
    if not ok:
        return "* Only the baseline was measured: there is no stack to read."
    thr = max(ok, key=lambda r: r["throughput_x_prev"])
    ttft = max(ok, key=lambda r: r.get("ttft_idle_x_prev") or 0)
    text = (f"* **Which stage paid off here**: {thr['stage']} gave the largest throughput factor "
            f"({factor_words(thr['throughput_x_prev'], 'more', 'less')}), {ttft['stage']} the largest idle-TTFT factor "
            f"({factor_words(ttft.get('ttft_idle_x_prev'), 'lower', 'higher')}).")
    q = _stage(rows, "+ INT8")
    if q:
        units = ("this machine has int8 dot-product units (VNNI/AMX, or a GPU)" if int8_units else
                 "this machine has no int8 matrix units, so its int8 matmuls get no faster arithmetic")
        text += (f" INT8 alone moved the idle TTFT {factor_words(q.get('ttft_idle_x_prev'), 'lower', 'higher')} and "
                 f"throughput {factor_words(q['throughput_x_prev'], 'higher', 'lower')}: {units}.")
    return text


def batching_line(rows: list[dict]) -> str | None:
    """Continuous batching's factors: throughput and TTFT under load, and whether the idle TTFT stayed (batching
    cannot make one idle request's prefill faster; if it moved, the engine's prefill path differs)."""
    b = _stage(rows, "+ continuous batching")
    if b is None:
        return None
    idle = b.get("ttft_idle_x_prev")
    still = (f"its idle TTFT did not move ({factor_words(idle, 'lower', 'higher')}): batching cannot make one idle "
             "request's prefill faster" if idle is None or abs(idle - 1) <= NOISE else
             f"its idle TTFT moved too ({factor_words(idle, 'lower', 'higher')}): the engine prefills through its "
             "own path, not `generate`'s, so one idle request is not served the same way")
    return (f"* **Continuous batching**: throughput {factor_words(b['throughput_x_prev'], 'higher', 'lower')}, TTFT "
            f"under load {factor_words(b.get('ttft_loaded_x_prev'), 'lower', 'higher')} (requests stop queueing "
            f"behind each other where it is lower); {still}.")


def attention_line(rows: list[dict]) -> str | None:
    """Where the fused attention kernel's gain shows: the larger of its idle-TTFT and throughput factors (by how
    far each is from 1), about equally when both moved by factors inside the noise of each other, or neither when
    both are inside the noise."""
    a = _stage(rows, "+ fast attention")
    if a is None:
        return None
    idle, thr = a.get("ttft_idle_x_prev") or 1.0, a.get("throughput_x_prev") or 1.0
    moved = {k: v for k, v in (("the idle TTFT", idle), ("throughput", thr)) if abs(v - 1) > NOISE}
    most = max(moved, key=lambda k: abs(math.log(moved[k]))) if moved else None
    where = ("neither moved beyond the noise here" if most is None else
             "its effect shows about equally in both (their factors inside the noise of each other)"
             if len(moved) == 2 and abs(math.log(idle / thr)) <= math.log(1 + NOISE) else
             f"its effect shows more in {most}, where it was a gain" if moved[most] > 1 else
             f"its effect shows more in {most}, where it was a loss")
    return (f"* **Fast attention**: the fused SDPA kernel changed the idle TTFT "
            f"{factor_words(idle, 'lower', 'higher')} and throughput {factor_words(thr, 'higher', 'lower')}: {where}. "
            "At 512 tokens attention is a small share of a prefill's FLOPs, but eager attention writes and reads the "
            "whole score matrix; FlashAttention's 1.4x in the guide is a GPU number that grows with context length.")


def quality_line(rows: list[dict], ppl_rows: list[dict], answers: list[dict]) -> str:
    """The final stage's perplexity change next to how many greedy answers stayed identical to the baseline's."""
    final = final_stage(rows)["stage"]
    ppl = next((r["ppl_delta_pct"] for r in ppl_rows if r["stage"] == final), None)
    same = next((r.get("identical") for r in answers if r["stage"] == final), None)
    text = f"* **Quality**: the final stage ({final}) moved perplexity {ppl:+.2f}%" if ppl is not None else (
        f"* **Quality**: the final stage ({final}) has no perplexity measured")
    if same is not None:
        text += (f" and kept {same:.0%} of the greedy answers identical to the baseline's"
                 + (": perplexity within 1% does not mean identical answers; check your own prompts before shipping "
                    "a quantized model" if same < 1 else ""))
    return text + "."


def best_here_line(best: dict | None) -> str | None:
    """Which configuration to run on this machine for this trace, and by how much it beats the guide's stack
    (or that it does not, or that the rounds cannot tell inside the noise), with its roofline ceiling, its
    projection to the full depth and its perplexity change, every number read from `best`
    (labkit.lessons.casestudy.best.compare_best). None where nothing was compared."""
    if not best or best.get("verdict", "none") == "none":
        return None
    rows = {r["stage"]: r for r in best["rows"]}
    stack, fast = rows[best["stack_stage"]], rows[best["fastest"]]
    x = best["x_stack"]
    rounds = f"rounds {min(x['values']):.2f}-{max(x['values']):.2f}x"
    ours = f"the guide's stack ('{stack['stage']}': {stack['config']}, {stack['output_throughput']:.2f} tok/s)"
    theirs = f"{fast['config']} ('{fast['stage']}', {fast['output_throughput']:.2f} tok/s)"
    if best["verdict"] == "candidate":
        text = (f"On this machine, for this trace, run {theirs}: {x['value']:.2f}x the throughput of {ours}, "
                f"{rounds}.")
    elif best["verdict"] == "stack":
        text = (f"On this machine, for this trace, keep {ours}: it is the fastest configuration measured here; the "
                f"fastest alternative, {theirs}, reached {x['value']:.2f}x its throughput ({rounds}).")
    else:
        text = (f"Inconclusive inside the noise: the fastest alternative, {theirs}, reached {x['value']:.2f}x the "
                f"throughput of {ours} ({rounds}, noise floor ±{x['noise']:.0%}); keep the guide's stack, or take "
                f"the alternative for its {fmt_bytes(fast['weight_bytes'])} of weights against "
                f"{fmt_bytes(stack['weight_bytes'])}.")
    run = rows[best["pick"]]
    if run.get("throughput_ceiling"):
        text += (f" The ceiling of '{run['stage']}' for this trace here is {run['throughput_ceiling']:.2f} tok/s "
                 f"(every prefill at its "
                 f"matmul rate, every decode step reading its weights once), {run['fraction_of_ceiling']:.0%} "
                 "reached")
        text += (f"; at the full depth it projects to {run['output_throughput_full']:.2f} tok/s against a ceiling "
                 f"of {run['throughput_ceiling_full']:.2f}." if run.get("throughput_ceiling_full") else ".")
    return text + _best_quality(best, rows, run, stack)


def _best_quality(best: dict, rows: dict, run: dict, stack: dict) -> str:
    """The picked configuration's perplexity change next to the stack's, and the fastest one within the
    tolerance where the picked one is outside it."""
    d, tol = run.get("ppl_delta_pct"), best["ppl_tolerance_pct"]
    if d is None:
        return " Its perplexity was not measured."
    text = f" Perplexity {d:+.2f}% against the fp32 baseline"
    if run is not stack and stack.get("ppl_delta_pct") is not None:
        text += f" (the guide's stack: {stack['ppl_delta_pct']:+.2f}%)"
    if abs(d) <= tol:
        return text + f", within ±{tol}%."
    safe = rows.get(best.get("fastest_within_ppl") or "")
    return text + (f", outside ±{tol}%: where quality matters, the fastest within it is {safe['config']} "
                   f"('{safe['stage']}', {safe['output_throughput']:.2f} tok/s, {safe['ppl_delta_pct']:+.2f}%)."
                   if safe else f", outside ±{tol}%, and no configuration measured here stays within it.")


def what_this_means(rows: list[dict], ppl_rows: list[dict], answers: list[dict], int8_units: bool,
                    best: dict | None = None) -> str:
    """The lesson's conclusions as markdown, every claim read from this run's rows (and, where the best-here
    candidates were measured, `best`: labkit.lessons.casestudy.best.compare_best)."""
    here = best_here_line(best)
    lines = [stack_line(rows, int8_units), batching_line(rows), attention_line(rows),
             quality_line(rows, ppl_rows, answers), here and f"* **Best on this machine**: {here}"]
    return "\n".join(x for x in lines if x)


def try_this(int8: str, int8_rows: list[dict], arrival: str) -> str:
    """The lesson's Try this, each line naming what this run picked or measured."""
    other = "int8-weight-only" if int8 != "int8-weight-only" else next(
        (r["method"] for r in int8_rows if r.get("status") == "ok" and r["method"] != int8), "int8-dynamic")
    row = next((r for r in int8_rows if r["method"] == other), None)
    seen = ("it was not measured in this run's pick" if row is None else
            f"in this run's pick: {row.get('why_not') or row.get('status')}")
    lines = [f"* `-p int8={other}` instead of the picked `{int8}`: see which stage loses and by how much ({seen})."]
    if arrival == "all-at-once":
        lines.append("* `-p arrival=poisson -p rate=2.0`: requests arriving over time instead of all at once; the "
                     "loaded TTFT column then shows queueing, which batching removes.")
    else:
        lines.append("* `-p arrival=all-at-once`: every request queued at once, the heaviest load for the "
                     "one-at-a-time stages.")
    lines.append("* `--preset full`: 4 layers, 16 requests, 128 output tokens and the whole held-out text for "
                 "perplexity.")
    lines.append("* `-p model=qwen3-30b-a3b`: the stack on a mixture-of-experts layer. A batched decode step reads "
                 "the experts all its sequences route to (up to all 128), not one set of weights the batch shares: "
                 "compare continuous batching's factor and the ceiling column with this run's.")
    lines.append("* `-p best_here=true` (or false): measure, after the guide's stack and in the same rounds, the "
                 "configurations that pay without int8/bf16 matrix units (weight-only INT8 and INT4, plain fp32), "
                 "and see which one this machine should run; by default only where it has no such units, in the "
                 "full preset. With `-p output_len=256` the trace is decode-heavy, where bytes read per step decide.")
    return "\n".join(lines)
