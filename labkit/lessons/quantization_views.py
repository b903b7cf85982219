"""What notebook 02 shows from its experiment's tables: readable views, one summary table, the lines under them
(predicted against measured, torch.compile's effect, the head's share of the bytes) and the two figures.

labkit.lessons.quantization measures (its DataFrames are what the record stores); this module only reads those
tables, so the words and figures cannot drift from the numbers.
"""

from __future__ import annotations

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
    out = [f"budget: {b['budget_s']:.0f} s were left for the timing rounds after a 2-token probe of each row "
           f"({b['probe_s']:.0f} s); the preset's sizes would take ~{b['wanted_s']:.0f} s here, the plan ~"
           f"{b['planned_s']:.0f} s" + ("" if b["wanted_s"] > b["budget_s"] else ": everything fits")]
    if "timed" in speed:
        out += [f"  {r['method']}: {r['timed']}" for _, r in speed.iterrows() if isinstance(r["timed"], str)]
    if b.get("over"):
        out.append(f"  {b['over']}")
    return out


def prediction_lines(speed, profile: dict | None) -> list[str]:
    """Notebook 01 predicted each dtype's decode speed-up over fp32 from its matrix-vector probes; these lines set
    that next to what was measured here, and where they differ by more than 1.5x, say from the fractions of the
    floor which side fell short."""
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
        if max(got, want) / min(got, want) > 1.5 and "decode_fraction" in rows[method]:
            f_m, f_b = rows[method]["decode_fraction"], rows["fp32"].get("decode_fraction")
            line += (f". Why on this machine: this path reached {f_m:.0%} of its bandwidth floor where fp32 reached "
                     f"{f_b:.0%}: " + ("its kernels, not the bytes, set the pace at batch 1" if f_m < f_b else
                                       "it streamed its bytes better than the probe predicted"))
        out.append(line)
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
    model's depth and at the shape's real depth (the same head over all the layers)."""
    rows = {r["method"]: r for _, r in speed.iterrows() if r["status"] == "ok" and r.get("head_share") == r.get(
        "head_share")}
    out = []
    for name in ("fp32", "int8-dynamic", "int4-rtn"):
        if name in rows:
            r = rows[name]
            out.append(f"{name}: the head is {r['head_share']:.0%} of the bytes a decode step reads here, "
                       f"{r['head_share_full_depth']:.0%} with all the shape's layers")
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
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    return fig
