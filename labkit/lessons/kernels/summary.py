"""What notebook 06's tables add up to: sentences from the sweeps, the inputs of the C10/C11/C15 verdicts
(`verdict_inputs`, judged by labkit.course.claims.kernels_verdicts) and the lesson's conclusions.

Everything here reads the measured tables; nothing runs a model.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from labkit.core.floors import reasons
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
        reason = r.get("fraction_of_floor_reason")
        if isinstance(reason, str) and reason:
            line += f": the profile's floor was beaten, so it was re-derived: {reason}"
        elif r["fraction_of_floor"] < 1 / 1.5:
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
        for line in reasons(okp, ["attention", "n"]):  # floors the run beat, and what they were re-derived from
            out.append(f"whole prefill ({line.split(', fraction_of_floor: ')[0]} tokens): "
                       + line.split(", fraction_of_floor: ", 1)[-1])
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
    fp32_cold = p.loc["fp32", "cold_over_warm"] if "fp32" in p.index else None
    if fp32_cold is not None and not math.isnan(fp32_cold):
        ratios["eager generate (fp32)"] = float(fp32_cold)
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
        out.append(memory_line(gr))
    rows = _fused_rows(sweep, mha["layout"].iloc[0])
    if rows:
        a, z = rows[0], rows[-1]
        trend = speed_trend(a, z)
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
        out.append(autocast_line(p, ac))
    if not kv.empty:
        per = kv.groupby("shape", sort=False)["bytes_per_token_layer"].first()
        full = {s: per[s] * shape(s).num_hidden_layers / 1024 for s in per.index}
        lo, hi = kv["measured/formula"].min(), kv["measured/formula"].max()
        agree = ("measured and equal to the formula" if max(abs(lo - 1), abs(hi - 1)) <= 0.01 else
                 f"measured at {lo:.2f}-{hi:.2f}x the formula")
        out.append(f"**KV cache** per token, {agree}: " + ", ".join(
            f"{s} {v:,.0f} KiB" for s, v in full.items()) + ": grouped-query attention stores only the KV heads.")
    q = kvq[kvq["status"] == "ok"] if "status" in kvq else kvq[:0]
    i8 = q[q["cache"].str.startswith("int8")]
    if not i8.empty:
        r = i8.iloc[0]
        out.append(f"**int8 KV cache**: {r['bytes_vs_fp']:.0%} of the full-precision cache's bytes for "
                   f"{r['ppl_vs_fp'] - 1:+.2%} perplexity and {r['top1_agreement']:.1%} of top tokens unchanged.")
    beaten = reasons(comp, "variant") + reasons(precision, "precision")
    if beaten:
        out.append("**Floors this run beat** (re-derived, so no fraction above 1 is shown): " + "; ".join(beaten))
    return out


def memory_line(gr: dict[str, float]) -> str:
    """Eager attention's measured growth of peak memory against the fused kernels', the conclusion chosen by the
    exponents (2: the n x n scores held; 1: only tiles of them)."""
    fused = {b: e for b, e in gr.items() if b in kernels.FUSED}
    grew = ", ".join(f"n^{e:.2f} ({b})" for b, e in fused.items()) or "not measured"
    if fused and gr["eager"] > max(fused.values()) + 0.3:
        return (f"**Memory**: eager attention's peak grew as n^{gr['eager']:.2f} here (the n x n scores), the fused "
                f"kernels' as {grew}. At long contexts that, not speed, is what decides whether a prompt fits at all.")
    return (f"**Memory**: eager attention's peak grew as n^{gr['eager']:.2f} here, the fused kernels' as {grew}: "
            "between these two lengths eager's peak did not grow faster, so its n x n scores were not yet what its "
            "peak held most of; compare at longer lengths (Try this).")


def speed_trend(a: dict, z: dict) -> str:
    """How the fastest fused kernel's factor over eager moved from the shortest length (`a`) to the longest
    (`z`), in words that follow the measured factors and whether the longest one is conclusive."""
    grew = z["speedup"] > a["speedup"] * 1.05
    if z["conclusive"] and z["speedup"] > 1:
        return "the longer the prompt, the more the fused kernel pays" if grew else "its lead did not grow here"
    if z["conclusive"]:  # slower than eager at the longest length
        return "it was still slower at the longest length, though less so" if grew else "it stayed slower"
    return "at the longest length the two were inside the noise"


def autocast_line(p, ac: str) -> str:
    """Autocast's peak (weights included) against fp32's, and the advice the numbers support: a cast model
    where one measured lower than autocast."""
    rel = p.loc[ac, "total_peak_MiB"] / p.loc["fp32", "total_peak_MiB"] - 1
    cast = next((m for m in ("bf16", "fp16") if m in p.index), None)
    text = (f"**Autocast** keeps the fp32 weights and casts them on every call: its peak (weights included) was "
            f"{rel:+.0%} against fp32")
    if cast and p.loc[cast, "total_peak_MiB"] < p.loc[ac, "total_peak_MiB"]:
        text += (f", and a {cast} cast peaked at {p.loc[cast, 'total_peak_MiB']:,.0f} MiB against autocast's "
                 f"{p.loc[ac, 'total_peak_MiB']:,.0f}: for inference memory, cast the model instead")
    elif cast:
        text += f", no higher than a {cast} cast's here"
    return text + "; no GradScaler is needed either way."


def plan_line(plan: pd.DataFrame | None) -> str | None:
    """The Try-this line on the planner's refusal: eager's estimate at the length it refused, and the fused kernels'
    (kernels.FUSED: never holding the n x n scores; sdpa-math does) at that length."""
    if plan is None or plan.empty:
        return None
    eager = plan[plan["backend"] == "eager"]
    refused = eager[eager["plan"] == "refused"]
    if refused.empty:
        n = int(eager["n"].max()) if not eager.empty else int(plan["n"].max())
        return (f"`-p lengths='[1024,4096,{n}]'`: even at {n:,} tokens eager's estimate fits the memory usable "
                "here; watch its peak against the fused kernels' as the length grows.")
    r = refused.iloc[0]
    fused = plan[(plan["n"] == r["n"]) & plan["backend"].isin(kernels.FUSED)]
    backends = '"eager","sdpa-flash","flex"'
    return (f"`-p lengths='[1024,2048,4096,{int(r['n'])}]' -p backends='[{backends}]'`:"
            f" at {int(r['n']):,} tokens eager's estimate ({r['estimate_GiB']:,.1f} GiB) is over the memory "
            f"usable here, so the planner refuses it with the estimate; the fused kernels' estimates there "
            f"are {fused['estimate_GiB'].min():,.2f}-{fused['estimate_GiB'].max():,.2f} GiB.")


def try_this(attn_dtype: str, sweep: pd.DataFrame, plan: pd.DataFrame | None, comp: pd.DataFrame) -> list[str]:
    """The lesson's Try this, each expectation stated with this run's own figure to compare against (so none can
    promise what this machine did not show)."""
    out = [line] if (line := plan_line(plan)) else []
    ok = sweep[(sweep["status"] == "ok") & (sweep["n"] == sweep["n"].max())]
    fused = ok[ok["backend"].isin(kernels.FUSED) & ok["ms"].notna()]
    other = "bf16" if attn_dtype == "fp32" else "fp32"
    now = (f"this run in {attn_dtype}: {fused.sort_values('ms').iloc[0]['backend']} "
           f"{than(fused.sort_values('ms').iloc[0]['vs_eager'], 'eager')} at {int(ok['n'].iloc[0]):,} tokens"
           if not fused.empty and "vs_eager" in fused else f"this run used {attn_dtype}")
    out.append(f"`-p attn_dtype={other}`: does the fused kernel's lead over eager change when the scores start in "
               f"{other}? Compare `x_vs_eager` and the peak at the longest length with {now}.")
    e = comp.set_index("variant")["decode_ms"].get("eager") if "variant" in comp else None
    step = f" (this run's eager decode step: {e:.1f} ms)" if e == e and e is not None else ""
    variants = '"eager","compile","compile+cpp_wrapper","compile+freezing+cpp_wrapper"'
    out.append(f"`-p compile_variants='[{variants}]' "
               "-p prompt_len=512 -p new_tokens=32`: the C++ wrapper removes Python from between the kernels, which "
               f"matters most where a step is short{step}; a longer request amortizes the cold start differently "
               "(`cold_over_warm`). Run the notebook twice and compare `compile_s` with `fx_cache_hits`: inductor's "
               "cache on disk serves the second run.")
    return out
