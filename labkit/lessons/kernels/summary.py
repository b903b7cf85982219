"""What notebook 06's tables add up to: sentences from the sweeps, the inputs of the C10/C11/C15 verdicts
(`verdict_inputs`, judged by labkit.course.claims.kernels_verdicts) and the lesson's conclusions.

Everything here reads the measured tables; nothing runs a model.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from labkit.core.models import shape
from labkit.core.roofline import Card
from labkit.core.units import than
from labkit.lessons.kernels.attention import LENGTHS_TRIED, eager_score_traffic, growth
from labkit.techniques import kernels

if TYPE_CHECKING:
    import pandas as pd


def _fused_rows(sweep: pd.DataFrame, layout: str) -> list[dict]:
    """Per length of `layout`: the fastest fused kernel that ran, against eager."""
    out = []
    ok = sweep[(sweep["status"] == "ok") & (sweep["layout"] == layout)]
    for n, g in ok.groupby("n"):
        eager = g[g["backend"] == "eager"]
        fused = g[g["backend"].isin(kernels.FUSED) & g["ms"].notna()]
        if eager.empty or fused.empty:
            continue
        best = fused.sort_values("ms").iloc[0]
        out.append({"n": int(n), "kernel": best["kernel"], "speedup": float(best["x_vs_eager"]),
                    "conclusive": bool(best["conclusive"]), "words": best["vs_eager"],
                    "memory_saving": 1 - best["peak_MiB"] / eager["peak_MiB"].iloc[0]})
    return out


def sweep_findings(sweep: pd.DataFrame, prefill: pd.DataFrame, card: Card, a100_length: int | None) -> list[str]:
    """Sentences from the sweeps: the measured growth of peak memory, where fused kernels pay, and how far
    from its roofline floor each kernel ran."""
    out = []
    ok = sweep[sweep["status"] == "ok"]
    for lay, g in ok.groupby("layout", sort=False):
        gr = growth(g, "peak_MiB")
        ns = sorted(g["n"].unique())
        out.append(f"{lay}: peak memory grows as " + ", ".join(f"{b} n^{e:.2f}" for b, e in gr.items())
                   + f" (between {ns[-2]:,} and {ns[-1]:,} tokens)" if len(ns) > 1 else f"{lay}: one length only")
        rows = _fused_rows(sweep, lay)
        if rows:
            pays = next((r["n"] for r in rows if r["speedup"] > 1 and r["conclusive"]), None)
            last = rows[-1]
            out.append(f"{lay}: at {last['n']:,} tokens {last['kernel']} is {than(last['words'], 'eager')} with "
                       f"{last['memory_saving']:.0%} less peak memory; fused is faster from "
                       + (f"{pays:,} tokens on" if pays else "no length measured here"))
    top = ok[ok["n"] == ok["n"].max()].dropna(subset=["fraction_of_floor"]) if "fraction_of_floor" in ok else ok[:0]
    top = top[(top["layout"] == top["layout"].iloc[0]) & (top["backend"] != "sdpa")] if not top.empty else top
    for _, r in top.iterrows():
        fl_s = r["floor_ms"] / 1e3
        flops = 4.0 * r["heads"] * r["head_dim"] * (r["n"] * (r["n"] + 1) // 2 if r["backend"] != "eager" and
                                                    r["backend"] != "sdpa-math" else r["n"] ** 2)
        rate = flops / (r["ms"] / 1e3) / 1e9
        peak = (card.peak(r["dtype"]) or float("nan")) / 1e9
        line = (f"{r['backend']} at {r['n']:,} tokens: {r['ms']:.1f} ms against a floor of {fl_s * 1e3:.1f} ms "
                f"({r['fraction_of_floor']:.0%}); it computed at {rate:,.0f} GFLOP/s against the probed "
                f"{r['dtype']} matmul peak of {peak:,.0f}")
        if r["fraction_of_floor"] < 1 / 1.5:
            line += (": why on this machine: attention multiplies head_dim-wide tiles "
                     f"({r['head_dim']}) with a softmax between them, far from the large square matmul the probe times"
                     if r["backend"] != "eager" else
                     ": why on this machine: eager runs five separate passes over the score matrix, each a "
                     "memory-bound elementwise kernel, besides its two matmuls")
        out.append(line)
    okp = prefill[prefill["status"] == "ok"] if "status" in prefill else prefill[:0]
    if not okp.empty:
        n = okp["n"].max()
        e, f = okp[(okp["n"] == n) & (okp["attention"] == "eager")], okp[(okp["n"] == n) & (okp["attention"] == "sdpa")]
        if not e.empty and not f.empty:
            out.append(f"whole prefill of {n:,} tokens ({e['model'].iloc[0]}, {e['layers'].iloc[0]} layer(s)): eager "
                       f"peaks at {e['peak_MiB'].iloc[0]:,.0f} MiB, sdpa ({f['kernel'].iloc[0]}) at "
                       f"{f['peak_MiB'].iloc[0]:,.0f} MiB; sdpa is {than(f['vs_eager'].iloc[0], 'eager')}")
        over = okp[okp["fraction_of_floor"] > 1] if "fraction_of_floor" in okp else okp[:0]
        if not over.empty:
            r = over.sort_values("fraction_of_floor").iloc[-1]
            out.append(f"a prefill faster than its floor ({r['attention']} at {r['n']:,} tokens: {r['ms']:.0f} ms "
                       f"against a floor of {r['floor_ms']:.0f} ms) means its matrix multiplications ran "
                       "faster than notebook 01's matmul probe: the prefill floor is only as good as that probed rate")
    if a100_length:
        short = a100_length <= min(LENGTHS_TRIED)
        out.append(f"on an A100 (fp16) the roofline lets a fused kernel reach 3x eager from {a100_length:,} tokens"
                   + (f": at every length tried, since eager moves {eager_score_traffic(2)} bytes through memory for "
                      "every score, which a fused kernel never writes out" if short else
                      ": the guide's 3x is a long-context figure"))
    return out


def verdict_inputs(sweep: pd.DataFrame, prefill: pd.DataFrame, comp: pd.DataFrame, precision: pd.DataFrame,
                   cuda_rows: list[dict]) -> dict:
    """What C10, C11 and C15 are judged on, from this lesson's tables (labkit.course.claims.kernels_verdicts
    judges them): peak memory per precision, the fused-attention rows (or why there are none) with the whole
    prefill's peak, and every cold/warm ratio measured."""
    p = precision.set_index("precision")
    ac = next((m for m in ("autocast-bf16", "autocast-fp16") if m in p.index), None)
    peaks = {"fp32": float(p.loc["fp32", "total_peak_MiB"]) if "fp32" in p.index else None,
             "autocast": float(p.loc[ac, "total_peak_MiB"]) if ac else None}
    cuda = {r["measurement"]: r for r in cuda_rows if r.get("status") == "ok"}
    if cuda:  # on CUDA the allocator's own figures, same forward
        peaks = {"fp32": cuda["fp32"]["total_peak_MiB"], "autocast": cuda["autocast"]["total_peak_MiB"],
                 "autocast+empty_cache": cuda["autocast+empty_cache"]["total_peak_MiB"]}

    mha = sweep["layout"].iloc[0]
    rows = _fused_rows(sweep, mha)
    skipped = None if rows else "; ".join(sweep[sweep["backend"].isin(kernels.FUSED)]["status"].unique())
    prefill_note = ""
    okp = prefill[prefill["status"] == "ok"] if "status" in prefill else prefill[:0]
    if not okp.empty:
        n = okp["n"].max()
        e, f = (okp[(okp["n"] == n) & (okp["attention"] == a)]["peak_MiB"] for a in ("eager", "sdpa"))
        if len(e) and len(f):
            prefill_note = f"; whole prefill of {n:,} tokens: sdpa peaks {1 - f.iloc[0] / e.iloc[0]:.0%} lower"

    ratios = {f"{r['variant']} (static-cache decoder" + (", inductor cache hit)" if r["fx_cache_hits"] else ")"):
              r["cold_over_warm"] for _, r in comp.iterrows()}
    flex = sweep[sweep["first_call_ms"].notna()] if "first_call_ms" in sweep else sweep[:0]
    for _, r in flex.iterrows():  # the length where flex compiled (its first call) against its steady state
        ratios[f"flex_attention ({r['layout'].split(' (')[0]}, {r['n']:,} tokens)"] = r["first_call_ms"] / r["ms"]
    if "fp32" in p.index:
        ratios["eager generate (fp32)"] = float(p.loc["fp32", "cold_over_warm"])
    return {"peaks": peaks, "fused_rows": rows, "fused_skipped": skipped, "prefill_note": prefill_note,
            "cold_over_warm": ratios}


def what_this_means(sweep: pd.DataFrame, prefill: pd.DataFrame, comp: pd.DataFrame, precision: pd.DataFrame,
                    kv: pd.DataFrame, kvq: pd.DataFrame) -> list[str]:
    """The lesson's conclusions, each built from the measured tables."""
    out = []
    ok = sweep[sweep["status"] == "ok"]
    mha = ok[ok["layout"] == ok["layout"].iloc[0]]
    gr = growth(mha, "peak_MiB")
    if "eager" in gr:
        fused = {b: e for b, e in gr.items() if b in kernels.FUSED}
        out.append(f"**Memory**: eager attention's peak grew as n^{gr['eager']:.2f} here (the n x n scores), the fused "
                   "kernels' as " + ", ".join(f"n^{e:.2f} ({b})" for b, e in fused.items())
                   + ". At long contexts that, not speed, is what decides whether a prompt fits at all.")
    rows = _fused_rows(sweep, mha["layout"].iloc[0])
    if rows:
        a, z = rows[0], rows[-1]
        trend = ("the longer the prompt, the more the fused kernel pays" if z["speedup"] > a["speedup"] * 1.05 else
                 "its lead did not grow with the prompt here")
        out.append(f"**Speed**: the fastest fused kernel went from {than(a['words'], 'eager')} at {a['n']:,} tokens "
                   f"to {than(z['words'], 'eager')} at {z['n']:,}: {trend}.")
    c = comp.set_index("variant")
    if "eager" in c.index and len(c) > 1:
        best = c.drop(index="eager")["decode_ms"].idxmin()
        b, e = c.loc[best], c.loc["eager"]
        gain = e["steady_s"] - b["steady_s"]
        faster = b["request_conclusive"] and b["x_request_vs_eager"] > 1 and gain > 0
        pays = (f"it pays back its {b['compile_s']:.0f} s of compiling after about "
                f"{math.ceil(b['compile_s'] / gain):,} requests like this one" if faster else
                f"a whole request is {than(b['request_vs_eager'], 'eager')}, so its {b['compile_s']:.0f} s of "
                "compiling is not paid back at this size on this machine")
        out.append(f"**torch.compile**: the best compiled variant ({best}) decodes at {b['decode_ms']:.1f} ms/token "
                   f"against eager's {e['decode_ms']:.1f} ({than(b['decode_vs_eager'], 'eager')}); its first request "
                   f"took "
                   f"{b['cold_s']:.1f} s ({b['cold_over_warm']:.0f}x its steady state); {pays}.")
    p = precision.set_index("precision")
    if {"fp32", "bf16"} <= set(p.index):
        share = p.loc["bf16", "weights_MiB"] / p.loc["fp32", "weights_MiB"]
        out.append(f"**Precision**: a bf16 cast holds {share:.0%} of fp32's weights, decodes "
                   f"{than(p.loc['bf16', 'decode_vs_fp32'], 'fp32')} and moves perplexity by "
                   f"{p.loc['bf16', 'ppl_vs_fp32'] - 1:+.2%}.")
    ac = next((m for m in ("autocast-bf16", "autocast-fp16") if m in p.index), None)
    if ac and "fp32" in p.index:
        out.append(f"**Autocast** keeps the fp32 weights and casts them on every call: its peak (weights included) "
                   f"was {p.loc[ac, 'total_peak_MiB'] / p.loc['fp32', 'total_peak_MiB'] - 1:+.0%} against fp32, so "
                   "for inference memory, cast the model instead; no GradScaler is needed either way.")
    if not kv.empty:
        per = kv.groupby("shape", sort=False)["bytes_per_token_layer"].first()
        full = {s: per[s] * shape(s).num_hidden_layers / 1024 for s in per.index}
        out.append("**KV cache** per token, measured and equal to the formula: " + ", ".join(
            f"{s} {v:,.0f} KiB" for s, v in full.items()) + ": grouped-query attention stores only the KV heads.")
    q = kvq[kvq["status"] == "ok"] if "status" in kvq else kvq[:0]
    i8 = q[q["cache"].str.startswith("int8")]
    if not i8.empty:
        r = i8.iloc[0]
        out.append(f"**int8 KV cache**: {r['bytes_vs_fp']:.0%} of the full-precision cache's bytes for "
                   f"{r['ppl_vs_fp'] - 1:+.2%} perplexity and {r['top1_agreement']:.1%} of top tokens unchanged.")
    return out
