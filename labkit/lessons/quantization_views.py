"""What notebook 02 shows from its experiment's tables: readable views, one summary table, the lines under them
(predicted against measured and why they differ, the reason of every floor a row beat, torch.compile's effect, the
head's share of the bytes, each width's size and quality cost, where int8-weight-only ranks) and the two figures.
Every sentence that compares numbers is built from them, on whichever side they fall (tests/test_prose.py).

labkit.lessons.quantization measures (its DataFrames are what the record stores); this module only reads those
tables, so the words and figures cannot drift from the numbers.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from labkit.core.units import mib

if TYPE_CHECKING:
    import pandas as pd


def summary_table(quality, speed) -> pd.DataFrame:
    """One row per method that ran anywhere: quality on the trained model next to speed on the shape-faithful
    one, the key columns under readable headers ("+compile" rows have speed only; the full tables are in the
    record)."""
    q = view(quality, {"method": "method", "bits_per_weight": "bits/weight", "ppl_vs_fp32": "perplexity / fp32",
                       "token_agreement": "greedy tokens = fp32", "disk_bytes": "MiB on disk"})
    q["MiB on disk"] = mib(q["MiB on disk"])
    s = view(speed, {"method": "method", "decode_x_vs_fp32": "decode x fp32", "decode_x_vs_bf16": "decode x bf16",
                     "prefill_x_vs_fp32": "prefill x fp32", "decode_fraction": "decode: of floor"})
    out = q.merge(s, on="method", how="outer", sort=False)
    order: dict[str, int] = {}
    for m in list(quality["method"]) + list(speed["method"]):  # the quality table's order, "+compile" rows last
        order.setdefault(m, len(order))
    return out.sort_values("method", key=lambda col: col.map(order)).reset_index(drop=True)



SPEED_VIEW = {"method": "method", "base_dtype": "from", "bytes_per_weight": "bytes/weight",
              "decode_read_mib": "MiB read/token", "head_share": "head share",
              "decode_ms_per_token": "decode ms/token", "decode_floor_ms": "decode floor ms",
              "decode_fraction": "of floor", "decode_x_vs_fp32": "decode x fp32", "prefill_ms": "prefill ms",
              "prefill_floor_ms": "prefill floor ms", "prefill_fraction": "of floor ", "prefill_x_vs_fp32":
              "prefill x fp32", "cold_s": "first call s"}
QUALITY_VIEW = {"method": "method", "bits_per_weight": "bits/weight", "ppl_vs_fp32": "perplexity / fp32",
                "token_agreement": "greedy tokens = fp32", "bytes": "MiB in memory", "quant_seconds": "quantize s"}


def view(df, columns: dict) -> pd.DataFrame:
    """The rows that ran, with the key columns under readable headers (units in them; bytes in MiB). The full
    table stays in the record."""
    ok = df[df["status"] == "ok"]
    out = ok.reindex(columns=list(columns)).rename(columns=columns)
    if "MiB in memory" in out:
        out["MiB in memory"] = mib(out["MiB in memory"])
    return out.reset_index(drop=True)


def skipped(df) -> list[str]:
    """'<method>: <reason>' for every row that did not run, the reason whole."""
    return [f"{r['method']}: {r['status']}" for _, r in df.iterrows() if r["status"] != "ok"]


def budget_lines(speed) -> list[str]:
    """What the lesson's time budget (`budget_s`) did to the speed rows: the time left, what the preset's sizes
    would have cost here (from each row's 2-token probe), and every row timed with fewer tokens or rounds. Rows not
    run are listed by `skipped` with their estimate. No budget: one line saying so."""
    b = speed.attrs.get("budget")
    if not b:
        return ["no time budget: every row timed at the preset's sizes"]
    how = (f", the eager ones at a {b['probe_prompt']}-token prompt with their prefill scaled to the full prompt"
           if b.get("probe_prompt") else "")
    out = [f"budget: {b['budget_s']:.0f} s were left for the timing rounds after a 2-token probe of each row{how} "
           f"({b['probe_s']:.0f} s); the preset's sizes would take ~{b['wanted_s']:.0f} s here, the plan ~"
           f"{b['planned_s']:.0f} s" + ("" if b["wanted_s"] > b["budget_s"] else ": everything fits")]
    if "timed" in speed:
        out += [f"  {r['method']}: {r['timed']}" for _, r in speed.iterrows() if isinstance(r["timed"], str)]
    if b.get("over"):
        out.append(f"  {b['over']}")
    return out


def prediction_lines(speed, profile: dict | None) -> list[str]:
    """Notebook 01 predicted each dtype's decode speed-up over fp32 from its matrix-vector probes; these lines set
    that next to what was measured here, and where they differ by more than 1.5x, say why (`prediction_why`)."""
    if not profile or not profile.get("predictions"):
        return ["no stored profile: run notebook 01 for predictions"]
    pred = {r["dtype"]: r[next(k for k in r if k.startswith("predicted speed-up"))] for r in profile["predictions"]}
    rows = {r["method"]: r for _, r in speed.iterrows() if r["status"] == "ok"}
    out = []
    for method, dtype in (("bf16", "bf16"), ("int8-dynamic", "int8"), ("int8-dynamic-onednn", "int8"),
                          ("int8-dynamic-legacy", "int8")):
        if method not in rows or dtype not in pred:
            continue
        got, want = rows[method]["decode_x_vs_fp32"], pred[dtype]
        line = (f"{method}: notebook 01 predicted decode {want:.2f}x fp32 (its {dtype} matrix-vector probe against "
                f"fp32's), measured {got:.2f}x")
        if max(got, want) / min(got, want) > MISS and "decode_fraction" in rows[method]:
            line += ". Why on this machine: " + prediction_why(rows[method], rows["fp32"], dtype, got / want, profile)
        out.append(line)
    return out


MISS = 1.5  # a measured speed-up this far from notebook 01's prediction (either way) is explained


def _streamed_gbps(row) -> float | None:
    """GB/s a row's decode step streamed: the bytes it reads per token over its measured time per token."""
    mib_read, ms = row.get("decode_read_mib"), row.get("decode_ms_per_token")
    return mib_read * 2**20 / (ms / 1e3) / 1e9 if mib_read and ms and ms == ms else None


def prediction_why(row, fp32, dtype: str, x: float, profile: dict) -> str:
    """Why a decode speed-up over fp32 was `x` times notebook 01's prediction (above 1: better), decided from the
    numbers. The prediction divides two probe rates (fp32's matrix-vector GB/s by `dtype`'s), so each side's rate
    here against its own probe says which one moved (within floors.LIMIT, 5%, a rate kept to its probe): better
    than predicted, either fp32 fell short of its probe while this path kept to its own, or this path beat its
    probe, because the profile was taken while the machine was busy (the profile marked unreliable, this path past
    the profile's bandwidth floor, or fp32 past its own probe too) or because this path's kernel streams its bytes
    better than the probe's; slower than predicted, either fp32 beat its probe while this path kept to its own, or
    this path's kernels, not its bytes, set the pace."""
    from labkit.core.floors import LIMIT

    probes = profile.get("probes", {}).get(profile.get("device", "cpu"), {})
    mv = probes.get("matvec_gbps", {})
    own, ref = _streamed_gbps(row), _streamed_gbps(fp32)
    own_vs = own / mv[dtype] if own and mv.get(dtype) else None
    ref_vs = ref / mv["fp32"] if ref and mv.get("fp32") else None
    f_m, f_b = row.get("decode_fraction"), fp32.get("decode_fraction")
    fractions = f"this path reached {f_m:.0%} of its bandwidth floor where fp32 reached {f_b:.0%}"
    known = own_vs is not None and ref_vs is not None
    if x > 1:
        head = f"measured {x:.1f}x better than predicted: "
        if known and own_vs <= LIMIT and ref_vs < own_vs:  # this path did not beat its probe: fp32 fell short
            return head + (f"fp32 streamed its bytes at only {ref_vs:.0%} of its own matrix-vector probe's rate "
                           f"({ref:.1f} of {mv['fp32']:.1f} GB/s) where this path reached {own_vs:.0%} of its {dtype} "
                           "probe's, so the ratio against fp32 grew")
        busy = [why for why, yes in (
            ("notebook 01's profile is marked unreliable", not profile.get("reliable", True)),
            ("this path beat the profile's bandwidth floor", isinstance(row.get("decode_fraction_reason"), str)),
            (f"fp32 too streamed {ref_vs or 0:.0%} of its own probe's rate", (ref_vs or 0) > LIMIT)) if yes]
        rate = (f"this path streamed {own:.1f} GB/s, notebook 01's {dtype} matrix-vector probe {mv[dtype]:.1f} GB/s"
                if own_vs is not None else None)
        if busy:
            return head + (f"notebook 01's matrix-vector rate for this kernel was too low ("
                           f"{'; '.join(w for w in (rate, *busy) if w)}): the profile was taken while the machine was "
                           "busy; rerun notebook 01 on a quiet machine")
        facts = "; ".join(w for w in (rate, fractions) if w)
        return head + f"it streamed its bytes better than its probe predicted ({facts})"
    head = f"measured {1 / x:.1f}x slower than predicted: "
    if known and own_vs >= 1 / LIMIT and ref_vs > own_vs:  # this path kept up with its probe: fp32 beat its own
        return head + (f"fp32 ran better than its probe predicted: it streamed {ref_vs:.0%} of its matrix-vector "
                       f"probe's rate ({ref:.1f} of {mv['fp32']:.1f} GB/s), this path {own_vs:.0%} of its {dtype} "
                       "probe's")
    if not known and f_m >= f_b:
        return head + f"{fractions}; the profile has no matrix-vector probes to say which side missed its own"
    return head + f"{fractions}: its kernels, not the bytes, set the pace at batch 1"


def floor_lines(speed) -> list[str]:
    """The reason of every floor a timed row beat (labkit.core.floors re-derived it), one line each, to print below
    the speed table, or one line saying none was beaten."""
    from labkit.core.floors import reasons

    got = reasons(speed[speed["status"] == "ok"], "method")
    return got or ["no row beat its floors: every fraction is the measurement against the profile's rates"]


def rank_line(speed, method: str = "int8-weight-only", noise: float | None = None) -> str:
    """Where `method`'s eager decode ranks among the timed rows (fastest first), its ms per token against the
    slowest row's (inside `noise`, bench's noise floor by default: as slow as it), and what its "+compile" row
    did, from the speed table."""
    from labkit.core.bench import NOISE_FLOOR

    noise = NOISE_FLOOR if noise is None else noise
    ok = speed[(speed["status"] == "ok") & speed["decode_ms_per_token"].notna()] if "decode_ms_per_token" in speed \
        else speed[:0]
    timed = ok.sort_values("decode_ms_per_token").to_dict("records")
    names = [r["method"] for r in timed]
    if method not in names:
        row = speed[speed["method"] == method]
        why = row["status"].iloc[0] if len(row) else "not in this run's methods"
        return f"{method}'s eager decode was not timed here ({why})"
    k, me, last = names.index(method), timed[names.index(method)], timed[-1]
    ms = f"{me['decode_ms_per_token']:,.1f} ms/token"
    if last is me:
        nxt = timed[-2] if len(timed) > 1 else None
        line = f"{method}'s eager decode is the slowest of the {len(timed)} timed rows here ({ms})"
        if nxt is not None:
            r = me["decode_ms_per_token"] / nxt["decode_ms_per_token"]
            line += (f", {r:.2f}x the next, {nxt['method']}" + (" (inside the noise)" if r - 1 <= noise else ""))
    else:
        r = last["decode_ms_per_token"] / me["decode_ms_per_token"]
        line = (f"{method}'s eager decode ranks {k + 1} of {len(timed)} timed rows here, fastest first ({ms}); the "
                f"slowest row, {last['method']}, takes {last['decode_ms_per_token']:,.1f} ms/token, {r:.2f}x as long"
                + (" (inside the noise: as slow)" if r - 1 <= noise else ""))
    comp = speed[speed["method"] == f"{method}+compile"].to_dict("records")
    if not comp:
        return line + f"; {method} is not compiled in this run (`--preset full` compiles it)"
    c = comp[0]
    if c["status"] != "ok":
        return line + f"; its compiled row: {c['status']}"
    words = c.get("decode_vs_eager")
    return line + (f"; its compiled row against its eager row, decode: {words}" if isinstance(words, str) else
                   "; its compiled row was timed but not compared with its eager row")


def _span(values, fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}} to {hi:{fmt}}"


def meaning_lines(quality) -> list[str]:
    """'What this means' for size and quality, from the quality table: each bit width's layers against fp32's 32
    bits, the whole model's bytes against fp32's (methods with packed weights only), each width's perplexity change,
    whether the narrower width cost more, and whether GPTQ and AWQ lost less than RTN on the same grid."""
    from labkit.lessons.quantization import HEAD_INT8

    rows = [r for r in quality.to_dict("records") if r.get("status") == "ok" and r["method"] not in
            ("fp32", "bf16", HEAD_INT8) and r.get("bits_per_weight") == r.get("bits_per_weight")]
    fp32 = next((r for r in quality.to_dict("records") if r["method"] == "fp32" and r.get("status") == "ok"), None)
    if not rows or fp32 is None:
        return ["no quantized row ran here: nothing to compare with fp32"]
    widths: dict[int, list[dict]] = {}
    for r in rows:
        widths.setdefault(int(r["bits_per_weight"]), []).append(r)
    out = []
    for bits in sorted(widths, reverse=True):
        g = widths[bits]
        layers = [r["bits_per_weight"] / 32 for r in g]
        line = (f"Size, {bits}-bit ({', '.join(r['method'] for r in g)}): the layers take {_span(layers, '.3f')} of "
                "fp32's bytes")
        packed = [r["bytes"] / fp32["bytes"] for r in g if not r.get("fake_quant") and r.get("bytes")]
        if packed:
            less = min(packed) > max(layers)
            line += (f"; the whole model {_span(packed, '.3f')} of fp32's, " +
                     ("less of a cut: the embeddings and the parts left unquantized stay as they were" if less else
                      "as much of a cut as its layers"))
        out.append(line)
    change = {bits: [r["ppl_vs_fp32"] - 1 for r in g if r.get("ppl_vs_fp32") == r.get("ppl_vs_fp32")]
              for bits, g in widths.items()}
    change = {b: c for b, c in change.items() if c}
    out += [f"Quality, {b}-bit: perplexity {_span(c, '+.1%')} against fp32" for b, c in sorted(change.items(),
                                                                                                  reverse=True)]
    if len(change) > 1:
        wide, narrow = max(change), min(change)
        w, n = statistics.median(change[wide]), statistics.median(change[narrow])
        out.append(f"Quality: {narrow} bits cost {'more' if n > w else 'no more'} than {wide} here (median "
                   f"{n:+.1%} against {w:+.1%})")
    ppl = {r["method"]: r["ppl_vs_fp32"] - 1 for r in rows if r["method"] in ("rtn", "gptq", "awq")}
    if "rtn" in ppl and len(ppl) > 1:
        verdict = ", ".join(f"{m} loses {'less' if ppl[m] < ppl['rtn'] else 'no less'} than plain rounding"
                            for m in ("gptq", "awq") if m in ppl)
        out.append("Rounding on one grid: " + ", ".join(f"{m} {v:+.1%}" for m, v in ppl.items()) + f": {verdict}")
    return out


def compile_lines(speed) -> list[str]:
    """What torch.compile did for each "+compile" row, from the record: its speed against its own eager row (from
    the same rounds; inconclusive inside the noise), the compile time (cold start), frames compiled and graph
    breaks, recompiles while timed, and any workaround labkit needed. A row that could not be timed says why."""
    out = []
    for _, r in speed[speed["method"].str.endswith("+compile")].iterrows():
        if r["status"] != "ok":
            out.append(f"{r['method']}: {r['status']}")
            continue
        out.append(f"{r['method']}: decode {r['decode_vs_eager']}, prefill {r['prefill_vs_eager']} than its eager row; "
                   f"compiling took {r['cold_s']:.0f} s (cold start); {r.get('compile', '')}; inductor options "
                   f"{r.get('compile_options', '{}')}")
        if isinstance(r.get("prefill_prefill"), str):
            out.append(f"  prefill runs {r['prefill_prefill']}: the prompt's forward took "
                       f"{r['prefill_compiled_ms']:.0f} ms compiled, {r['prefill_eager_ms']:.0f} ms eager "
                       "(StaticDecoder.choose_prefill)")
    fixes = sorted({w for w in speed.get("workaround", []) if isinstance(w, str)})
    out += [f"labkit {w}" for w in fixes]
    n = speed.attrs.get("recompiles_while_timed")
    if out and n is not None:
        out.append(f"frames compiled while the rounds were timed: {n}" + (" (every compiled path stayed on its graphs)"
                                                                          if n == 0 else ": recompiles, see above"))
    return out


def head_lines(speed) -> list[str]:
    """How much of a decode step's bytes the output head is, in the fp32 row and a quantized one, at the speed
    model's depth and at the shape's real depth (the same head over all the layers); for a MoE model, what its
    floors count and which experts code each row runs."""
    rows = {r["method"]: r for _, r in speed.iterrows() if r["status"] == "ok" and r.get("head_share") == r.get(
        "head_share")}
    out = []
    for name in ("fp32", "int8-dynamic", "int4-rtn"):
        if name in rows:
            r = rows[name]
            full = r.get("head_share_full_depth")  # None for a model built without a shape to project to
            out.append(f"{name}: the head is {r['head_share']:.0%} of the bytes a decode step reads here"
                       + (f", {full:.0%} with all the shape's layers" if full == full and full is not None else ""))
    moe = speed.attrs.get("experts")
    if moe:
        out.append(f"a mixture-of-experts layer: each decode floor counts the {moe['routed']} of {moe['total']} "
                   f"experts a token routes to; fp32 and bf16 run transformers' own experts code "
                   f"({moe['baseline']!r}), the quantized rows labkit's per-expert linear layers (quant_experts), so "
                   "their factors over fp32 include that change of code too")
    return out


def plot_quality(quality):
    """Perplexity change against fp32 per method (bars, %), each labelled with its bits per weight; hatched bars
    are fake-quantized (dequantized weights: quality only)."""
    import matplotlib.pyplot as plt

    ok = quality[quality["status"] == "ok"].sort_values("bits_per_weight", ascending=False)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(ok) + 1.2))
    y = range(len(ok))
    change = 100 * (ok["ppl_vs_fp32"] - 1)
    bars = ax.barh(list(y), change, color=["tab:orange" if f else "tab:blue" for f in ok["fake_quant"]])
    for b, fake in zip(bars, ok["fake_quant"], strict=True):
        b.set_hatch("//" if fake else "")
    for i, (c, bits) in enumerate(zip(change, ok["bits_per_weight"], strict=True)):
        ax.text(c, i, f" {bits:.1f} bits", va="center", ha="left" if c >= 0 else "right", fontsize=8)
    ax.set_yticks(list(y), ok["method"])
    ax.axvline(0, color="grey", lw=0.8)
    ax.invert_yaxis()
    ax.margins(x=0.2)  # room for the labels at either end
    ax.set(xlabel="held-out perplexity change vs fp32 (%)", title="What each method costs in quality")
    return fig


def plot_speed(speed):
    """Batch-1 decode time per token of every timed path (bars, log scale) with its own bandwidth floor (black
    tick): how far each kernel is from what its bytes allow."""
    import matplotlib.pyplot as plt

    ok = speed[speed["status"] == "ok"].sort_values("decode_ms_per_token")
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(ok) + 1.2))
    y = list(range(len(ok)))
    ax.barh(y, ok["decode_ms_per_token"], color="tab:blue", label="measured")
    if "decode_floor_ms" in ok:
        ax.scatter(ok["decode_floor_ms"], y, marker="|", s=300, color="k", zorder=3, label="its bandwidth floor")
    ax.set_yticks(y, ok["method"])
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set(xlabel="ms per output token, batch 1 (log)", title="Decode speed of each path against its floor")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below the axis label
    return fig
