"""Notebook 06's experiment: attention kernels, torch.compile, precision and the KV cache, measured.

The techniques live in `techniques.kernels` (attention in one call) and `techniques.memory` (peak memory, KV-cache
bytes, the int8 cache); this module holds the loops that measure them and the tables the notebook shows:
- `attention_sweep` / `prefill_sweep`: time and peak memory of the attention op and of a whole prefill
  against sequence length, every backend timed side by side (`bench.run_rounds`), each next to its roofline
  floor; `plan_lengths` shows what the planner refuses before running;
- `compile_study`: torch.compile of a static-cache decoder with inductor options, compile time and first call
  apart, graph breaks and recompiles; `step_profile` says where a step's time goes;
- `precision_speed` / `precision_quality`: fp32, bf16, fp16 casts and autocast;
- `kv_measured`, `kv_context_table`, `kv_quant_study`: the KV cache's bytes, formula against allocation, and
  an int8 cache's saving and quality cost.
A backend or mode this machine cannot run is a row "skipped: <reason>"; one predicted not to fit is "refused:
<estimate>", never another kernel's numbers.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from labkit.core.bench import run_rounds
from labkit.core.models import ShapeSpec, shape
from labkit.core.planner import PlanError
from labkit.core.roofline import Card, Floor
from labkit.techniques import kernels, memory

if TYPE_CHECKING:
    import pandas as pd

MiB = 2**20
GiB = 2**30
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def than(words: str, ref: str) -> str:
    """A Ratio's words against `ref`: "2.50x faster than eager", or, inside the noise, "no different from eager
    (inconclusive ...)"."""
    return f"no different from {ref} ({words})" if words.startswith("inconclusive") else f"{words} than {ref}"


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


# ---------------------------------------------------------------- attention layouts and their floors

@dataclass(frozen=True)
class Layout:
    """The head layout of a model's attention: what the attention op's cost depends on."""

    name: str
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, shape_name: str) -> Layout:
        s = shape(shape_name)
        kind = "MHA" if s.num_key_value_heads == s.num_attention_heads else "GQA"
        return cls(f"{shape_name} ({kind} {s.num_attention_heads}/{s.num_key_value_heads} x {s.head_dim})",
                   s.num_attention_heads, s.num_key_value_heads, s.head_dim)


# Bytes eager attention moves per score element (scores are [heads, n, end]) at b bytes per input element:
# QK^T writes b; "* scale" reads b, writes b; masked_fill reads b, writes b; .float() reads b, writes 4 (a no-op
# in fp32); softmax reads 4 twice (max, then exp-sum) and writes 4; .to(dtype) reads 4, writes b; "@ v" reads b.
def eager_score_traffic(b: int) -> int:
    cast = 0 if b == 4 else b + 4 + 4 + b
    return b + 2 * b + 2 * b + cast + 3 * 4 + b


def attention_floor(card: Card, layout: Layout, n: int, dtype: str, backend: str, batch: int = 1) -> Floor:
    """The roofline floor of one attention call on `card`: fused kernels do the causal half of the FLOPs and
    move q, k, v and the output once; eager computes every score (masked ones too) and moves the score matrix
    through memory several times (`eager_score_traffic`)."""
    b = {"fp32": 4, "bf16": 2, "fp16": 2}[dtype]
    qkvo = batch * (2 * layout.heads + 2 * layout.kv_heads) * n * layout.head_dim * b
    scores = batch * layout.heads * n * n
    fused = backend in kernels.FUSED or backend == "sdpa"  # sdpa: whatever the dispatcher picks, at best fused
    pairs = n * (n + 1) // 2 if fused else n * n
    flops = 4.0 * batch * layout.heads * layout.head_dim * pairs
    nbytes = qkvo + (0 if fused else scores * eager_score_traffic(b))
    peak = card.peak(dtype)
    return Floor("attention", nbytes, flops, nbytes / (card.bandwidth_gbps * 1e9), flops / peak if peak else None)


def roofline_speedup(card: Card, layout: Layout, lengths: list[int], dtype: str = "fp16") -> list[dict]:
    """Eager floor / fused floor on `card` at each length: the most a fused kernel can gain there."""
    rows = []
    for n in lengths:
        e, f = attention_floor(card, layout, n, dtype, "eager"), attention_floor(card, layout, n, dtype, "sdpa-flash")
        rows.append({"n": n, "eager_floor_ms": e.seconds * 1e3, "fused_floor_ms": f.seconds * 1e3,
                     "x_fused_vs_eager": e.seconds / f.seconds, "eager_bound": e.bound, "fused_bound": f.bound})
    return rows


LENGTHS_TRIED = tuple(2**i for i in range(6, 17))  # 64 .. 65,536 tokens


def length_for_speedup(card: Card, layout: Layout, target: float, dtype: str = "fp16",
                       lengths: tuple[int, ...] = LENGTHS_TRIED) -> int | None:
    """The shortest length (of `lengths`) at which the roofline lets a fused kernel be `target` x eager."""
    return next((r["n"] for r in roofline_speedup(card, layout, list(lengths), dtype)
                 if r["x_fused_vs_eager"] >= target), None)


# ---------------------------------------------------------------- the attention op against length

def _qkv(layout: Layout, n: int, dtype: torch.dtype, device: str, seed: int, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, layout.heads, n, layout.head_dim, generator=g)
    k = torch.randn(batch, layout.kv_heads, n, layout.head_dim, generator=g)
    v = torch.randn(batch, layout.kv_heads, n, layout.head_dim, generator=g)
    return (x.to(device=device, dtype=dtype) for x in (q, k, v))


def _plan(backend: str, layout: Layout, n: int, dtype: torch.dtype, device: str, q, k, v) -> tuple[int, str | None]:
    """(estimate, None) when `backend` can run at this length here, or (estimate, 'skipped/refused: why')."""
    as_ = backend
    if backend == "sdpa":  # the dispatcher's pick decides whether the scores are materialized
        as_ = "sdpa-math" if kernels.sdpa_choice(q, k, v) == "math" else "sdpa-flash"
    est = kernels.peak_estimate(as_, 1, layout.heads, layout.kv_heads, n, layout.head_dim, dtype)
    reason = kernels.unsupported(backend, q, k, v)
    if reason:
        return est, f"skipped: {reason}"
    inputs = (2 * layout.heads + 2 * layout.kv_heads) * n * layout.head_dim * torch.empty((), dtype=dtype).itemsize
    try:
        kernels.check_fits(est + inputs, f"{backend} attention at {n:,} tokens ({layout.name})", device)
    except PlanError as e:
        return est, f"refused: {e}"
    return est, None


def plan_lengths(layout: Layout, lengths: list[int], backends: list[str], dtype: torch.dtype,
                 device: str = "cpu") -> pd.DataFrame:
    """What the planner says before anything runs: each backend's estimated peak at each length, and whether
    it fits the memory usable now (a refusal carries the estimate)."""
    import pandas as pd

    rows = []
    for n in lengths:
        q = torch.empty(1, layout.heads, n, layout.head_dim, dtype=dtype, device=device)  # never touched:
        k = torch.empty(1, layout.kv_heads, n, layout.head_dim, dtype=dtype, device=device)  # no memory used
        for b in backends:
            est, status = _plan(b, layout, n, dtype, device, q, k, k)
            rows.append({"layout": layout.name, "n": n, "backend": b, "estimate_GiB": est / GiB,
                         "plan": (status or "fits").split(":")[0], "message": status})
    return pd.DataFrame(rows)


def plan_table(plan: pd.DataFrame) -> pd.DataFrame:
    """`plan_lengths` as one row per length: each backend's estimate (GiB) and whether the planner lets it run."""
    est = plan.pivot_table(index="n", columns="backend", values="estimate_GiB", sort=False).add_suffix(" GiB")
    return est.join(plan.pivot(index="n", columns="backend", values="plan"))


def attention_sweep(layouts: list[Layout], lengths: list[int], backends: list[str], dtype: torch.dtype,
                    device: str = "cpu", rounds: int = 2, card: Card | None = None, seed: int = 0,
                    progress: bool = True) -> pd.DataFrame:
    """Every backend at every length, for each head layout (batch 1, causal, n queries over n keys).

    Per length: each runnable backend is called once under the memory profiler (its peak, and its output
    checked against eager's), then timed in `rounds` rotating rounds (`bench.run_rounds`): `ms` is the median,
    `x_vs_eager` the median of per-round ratios. flex compiles before that, at the first length of each layout
    (`first_call_ms`). Rows for backends that cannot run say why; a length predicted not to fit is refused
    before it runs."""
    import pandas as pd
    from tqdm.auto import tqdm

    rows, compiled = [], set()
    jobs = [(lay, n) for lay in layouts for n in lengths]
    for lay, n in tqdm(jobs, desc="attention sweep", disable=not progress):
        q, k, v = _qkv(lay, n, dtype, device, seed)
        base = {"layout": lay.name, "heads": lay.heads, "kv_heads": lay.kv_heads, "head_dim": lay.head_dim, "n": n,
                "dtype": dtype_name(dtype)}
        run, here, ref = {}, {}, None
        for b in backends:
            est, status = _plan(b, lay, n, dtype, device, q, k, v)
            row = {**base, "backend": b, "kernel": kernels.kernel_name(b, q, k, v), "estimate_MiB": est / MiB,
                   "status": status or "ok"}
            if status is None:
                fn = (lambda b=b, q=q, k=k, v=v: kernels.attention(q, k, v, b))
                with torch.inference_mode():
                    if b == "flex" and lay not in compiled:  # flex compiles here, once per layout (its
                        compiled.add(lay)  # lengths are dynamic): the first call, timed apart
                        t0 = time.perf_counter()
                        fn()
                        row["first_call_ms"] = (time.perf_counter() - t0) * 1e3
                    out, peak = memory.peak_during(fn, device)  # the other backends' first call
                if b == "eager":
                    ref = out
                row["peak_MiB"] = peak.peak / MiB
                if ref is not None:
                    row["max_abs_err_vs_eager"] = float((out.float() - ref.float()).abs().max())
                run[b] = fn
                del out
            here[b] = row
        if run:
            with torch.inference_mode():
                r = run_rounds(run, rounds, cold=False, device=device, progress=False, desc=f"n={n}")
            for b in run:
                here[b]["ms"] = r.median(b) * 1e3
                if "eager" in run:
                    ratio = r.ratio("eager", b)
                    here[b].update({"x_vs_eager": ratio.value, "vs_eager": ratio.words(),
                                    "conclusive": ratio.conclusive})
                if card is not None:
                    fl = attention_floor(card, lay, n, dtype_name(dtype), b)
                    here[b]["floor_ms"] = fl.seconds * 1e3
                    here[b]["fraction_of_floor"] = fl.seconds / r.median(b)
        rows += here.values()
        del q, k, v, ref
    return pd.DataFrame(rows)


def growth(df: pd.DataFrame, value: str, by: str = "backend", x: str = "n") -> dict[str, float]:
    """The measured growth exponent of `value` against `x` per group: the slope of log(value) over log(x)
    between the two longest lengths (2: quadratic, 1: linear), where both are measured and positive."""
    out = {}
    for key, g in df.dropna(subset=[value]).groupby(by, sort=False):
        g = g[g[value] > 0].sort_values(x)
        if len(g) >= 2:
            a, b = g.iloc[-2], g.iloc[-1]
            out[key] = math.log(b[value] / a[value]) / math.log(b[x] / a[x])
    return out


# ---------------------------------------------------------------- a whole prefill against length

def prefill_sweep(model, spec: ShapeSpec, layers: int, lengths: list[int], impls: tuple[str, ...] = ("eager", "sdpa"),
                  rounds: int = 2, card: Card | None = None, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """A whole prefill (every layer, the KV cache written, the last token's logits) of `lengths` tokens with
    each of Hugging Face's attention implementations (`model.set_attn_implementation`): peak memory (weights
    excluded: they were there before) and time, side by side, with the roofline floor of the same prefill."""
    import pandas as pd
    from tqdm.auto import tqdm

    from labkit.core.models import prompt_ids
    from labkit.core.planner import activation_bytes
    from labkit.core.roofline import kv_cache_bytes, prefill_floor

    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    dt = dtype_name(dtype)
    lay = Layout(spec.name, spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim)
    rows = []
    for n in tqdm(lengths, desc="prefill sweep", disable=not progress):
        ids = prompt_ids(n, vocab_size=spec.vocab_size, seed=seed).to(dev)
        run, here = {}, {}
        for impl in impls:
            attn = kernels.peak_estimate("eager" if impl == "eager" else "sdpa-flash", 1, lay.heads, lay.kv_heads, n,
                                         lay.head_dim, dtype)
            est = activation_bytes(spec, dt, n) + kv_cache_bytes(spec, dt, n, layers=layers) + attn
            row = {"model": spec.name, "layers": layers, "n": n, "attention": impl, "estimate_MiB": est / MiB}
            if impl == "sdpa":
                q = torch.empty(1, lay.heads, n, lay.head_dim, dtype=dtype, device=dev)
                kv = torch.empty(1, lay.kv_heads, n, lay.head_dim, dtype=dtype, device=dev)
                row["kernel"] = f"sdpa -> {kernels.sdpa_choice(q, kv, kv)}"
            else:
                row["kernel"] = impl
            try:
                kernels.check_fits(est, f"a {impl} prefill of {n:,} tokens", str(dev))
            except PlanError as e:
                row["status"] = f"refused: {e}"
                here[impl] = row
                continue

            def fn(impl=impl):
                model.set_attn_implementation(impl)
                return model(input_ids=ids, use_cache=True, logits_to_keep=1).logits

            with torch.inference_mode():
                _, peak = memory.peak_during(fn, dev)  # the first call, apart from the timed rounds
            row.update({"status": "ok", "peak_MiB": peak.peak / MiB})
            run[impl], here[impl] = fn, row
        if run:
            with torch.inference_mode():
                r = run_rounds(run, rounds, cold=False, device=dev, progress=False)
            fl = prefill_floor(spec, dt, card, n, layers=layers) if card is not None else None
            for impl in run:
                here[impl]["ms"] = r.median(impl) * 1e3
                if "eager" in run:
                    ratio = r.ratio("eager", impl)
                    here[impl].update({"x_vs_eager": ratio.value, "vs_eager": ratio.words(),
                                       "conclusive": ratio.conclusive})
                if fl is not None:
                    here[impl]["floor_ms"] = fl.seconds * 1e3
                    here[impl]["fraction_of_floor"] = fl.seconds / r.median(impl)
        rows += here.values()
    model.set_attn_implementation("sdpa")
    return pd.DataFrame(rows)


def _plain(v: float, _=None) -> str:
    return f"{v:,.0f}" if v >= 1 else f"{v:g}"


def _panel(ax, df: pd.DataFrame, key: str, value: str, ylabel: str, title: str) -> None:
    """One log-log panel: `value` against n per `key` (backend or attention), a line style per layout (solid:
    the first, dashed: the second), ticks at the measured lengths."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ok = df[(df["status"] == "ok") & df[value].notna()] if value in df else df.iloc[0:0]
    col = "layout" if "layout" in ok else "model"
    layouts = list(dict.fromkeys(ok[col]))
    names = list(dict.fromkeys(ok[key]))
    for li, lay in enumerate(layouts):
        for name, g in ok[ok[col] == lay].groupby(key, sort=False):
            ax.plot(g["n"], g[value], marker="o", ls=("-", "--", ":")[li % 3], color=f"C{names.index(name)}",
                    label=name if li == 0 else None)
    handles = [Line2D([], [], color=f"C{i}", marker="o", label=n) for i, n in enumerate(names)]
    handles += [Line2D([], [], color="k", ls=("-", "--", ":")[i % 3], label=lay) for i, lay in enumerate(layouts)]
    ax.set(xscale="log", yscale="log", xlabel="sequence length n (tokens)", ylabel=ylabel, title=title)
    ns = sorted(ok["n"].unique())
    ax.set_xticks(ns, [f"{n:,}" for n in ns])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))  # 1, 10, 100, with 2s and 5s between: readable on a
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: _plain(v) if f"{v:e}"[0] in "25" else ""))  # narrow one
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(handles=handles, fontsize=7)


def plot_memory(op: pd.DataFrame, prefill: pd.DataFrame | None = None):
    """Peak memory against sequence length, log-log: the attention op per backend (left; dashed: the second
    layout), the whole prefill per attention implementation (right). The title gives the measured growth."""
    import matplotlib.pyplot as plt

    panels = [(op, "backend", "attention op")] + ([(prefill, "attention", "whole prefill (weights excluded)")]
                                                  if prefill is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(10, 4.4), squeeze=False)
    for ax, (df, key, title) in zip(axes[0], panels, strict=True):
        _panel(ax, df, key, "peak_MiB", "peak memory (MiB)", title)
    first = op[(op["status"] == "ok") & (op["layout"] == op["layout"].iloc[0])]
    gr = growth(first, "peak_MiB")
    fused = [b for b in gr if b in kernels.FUSED]
    if "eager" in gr and fused:
        fig.suptitle(f"Peak memory against length, measured: eager grows as n^{gr['eager']:.2f}, "
                     f"{fused[0]} as n^{gr[fused[0]]:.2f} (longest two lengths)")
    fig.tight_layout()
    return fig


def plot_time(op: pd.DataFrame, prefill: pd.DataFrame | None = None):
    """Median time against length, log-log: attention op (left), whole prefill (right)."""
    import matplotlib.pyplot as plt

    panels = [(op, "backend", "attention op")] + ([(prefill, "attention", "whole prefill")] if prefill is not None
                                                  else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(10, 4.4), squeeze=False)
    for ax, (df, key, title) in zip(axes[0], panels, strict=True):
        _panel(ax, df, key, "ms", "median time (ms)", title)
    fig.suptitle("Time against length: where a fused kernel pays")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- torch.compile with a static KV cache

COMPILE_VARIANTS: dict[str, dict | None] = {
    "eager": None,
    "compile": {},
    "compile+freezing": {"freezing": True},
    "compile+cpp_wrapper": {"cpp_wrapper": True},
    "compile+freezing+cpp_wrapper": {"freezing": True, "cpp_wrapper": True},
}


def _new_compiles(before: set) -> list:
    from torch._dynamo.utils import get_compilation_metrics

    return [m for m in get_compilation_metrics() if m.compile_id not in before]


def _compile_ids() -> set:
    from torch._dynamo.utils import get_compilation_metrics

    return {m.compile_id for m in get_compilation_metrics()}


def _compile_summary(ms: list) -> dict:
    reasons = [m.recompile_reason for m in ms if m.recompile_reason]
    return {"compile_s": sum(m.entire_frame_compile_time_s or 0.0 for m in ms), "graphs": len(ms),
            "graph_breaks": sum(m.num_graph_breaks or 0 for m in ms), "recompiles": len(reasons),
            "recompile_reasons": reasons,
            "fx_cache_hits": sum(m.inductor_fx_local_cache_hit_count or 0 for m in ms),
            "fx_cache_misses": sum(m.inductor_fx_local_cache_miss_count or 0 for m in ms),
            "failed": [f"{m.fail_type}: {m.fail_reason}" for m in ms if m.fail_type]}


def compile_study(model, spec: ShapeSpec, layers: int, prompt_len: int, new_tokens: int,
                  variants: list[str], rounds: int = 3, card: Card | None = None, seed: int = 0,
                  progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Greedy decoding over a static KV cache (`decode.StaticDecoder`), eager and under torch.compile with each
    variant's inductor options. The first request of each is its cold start: `compile_s` is what dynamo and
    inductor spent compiling in it (from torch's own compile metrics), `first_run_s` the rest. Steady state:
    every variant serves the same request once per round, rounds rotating (`bench.run_rounds`); prefill is
    TTFT, decode the time per output token. Graphs, graph breaks and recompiles are counted from the compile
    metrics, in the cold start and in steady state (which should add none). Returns the table and the decoders
    (for `compile_profiles`)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from labkit.core.models import prompt_ids
    from labkit.core.roofline import decode_floor, prefill_floor
    from labkit.techniques.decode import StaticDecoder

    unknown = [v for v in variants if v not in COMPILE_VARIANTS]
    if unknown:
        raise ValueError(f"unknown compile variant(s) {unknown}; choose from {list(COMPILE_VARIANTS)}")
    dev = next(model.parameters()).device
    dt = dtype_name(next(model.parameters()).dtype)
    ids = prompt_ids(prompt_len, vocab_size=spec.vocab_size, seed=seed).to(dev)
    rows, decoders, tokens = {}, {}, {}
    for name in tqdm(variants, desc="compile variants", disable=not progress):
        opts = COMPILE_VARIANTS[name]
        before = _compile_ids()
        dec = StaticDecoder(model, prompt_len + new_tokens, compile=opts is not None, options=opts or None)
        rt, out = dec.generate(ids, new_tokens)
        info = _compile_summary(_new_compiles(before))
        cold = rt.e2e
        rows[name] = {"variant": name, "options": opts, "cold_s": cold, "cold_ttft_s": rt.ttft,
                      "first_run_s": cold - info["compile_s"], **info}
        decoders[name], tokens[name] = dec, out

    def call(d):
        rt = d.generate(ids, new_tokens)[0]
        return {"ttft": rt.ttft, "tpot": rt.tpot, "e2e": rt.e2e}

    before = _compile_ids()
    r = run_rounds({n: (lambda d=d: call(d)) for n, d in decoders.items()}, rounds, cold=False, device=dev,
                   progress=progress, desc="steady state")
    steady = _compile_summary(_new_compiles(before))
    pf = prefill_floor(spec, dt, card, prompt_len, layers=layers) if card is not None else None
    df = decode_floor(spec, dt, card, prompt_len + new_tokens // 2, layers=layers) if card is not None else None
    ref = "eager" if "eager" in decoders else None
    for name, row in rows.items():
        row.update({"prefill_ms": r.median(name, "ttft") * 1e3, "decode_ms": r.median(name, "tpot") * 1e3,
                    "steady_s": r.median(name, "e2e"), "same_tokens_as_eager": bool(torch.equal(tokens[name],
                                                                                                tokens[ref]))
                    if ref else None})
        row["cold_over_warm"] = row["cold_s"] / row["steady_s"]
        row["steady_recompiles"] = steady["recompiles"] if name != "eager" else 0
        if ref and name != ref:
            for ph, key in (("prefill", "ttft"), ("decode", "tpot"), ("request", "e2e")):
                ratio = r.ratio(ref, name, key)
                row[f"x_{ph}_vs_eager"], row[f"{ph}_vs_eager"] = ratio.value, ratio.words()
                row[f"{ph}_conclusive"] = ratio.conclusive
        if pf is not None:
            row["prefill_floor_ms"], row["decode_floor_ms"] = pf.seconds * 1e3, df.seconds * 1e3
            row["prefill_fraction_of_floor"] = pf.seconds / (row["prefill_ms"] / 1e3)
            row["decode_fraction_of_floor"] = df.seconds / (row["decode_ms"] / 1e3)
    out = pd.DataFrame(list(rows.values()))
    out.attrs["load"] = r.load
    return out, decoders


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul", "mkldnn::", "aten::_int_mm",
              "onednn::", "mkl::", "aten::baddbmm")


def step_profile(fn, top: int = 6) -> dict:
    """Where one call's CPU time goes (torch.profiler, self time per op): the share in matrix-multiply library
    calls, which torch.compile hands to the same library as eager does, against the rest (the elementwise and
    glue work a compiler can fuse, and the framework's own overhead)."""
    from torch.profiler import ProfilerActivity, profile

    memory._quiet_profiler()
    with torch.inference_mode():
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
    ev = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in ev)
    mm = sum(e.self_cpu_time_total for e in ev if e.key.startswith(MATMUL_OPS))
    ev.sort(key=lambda e: -e.self_cpu_time_total)
    return {"total_ms": total / 1e3, "matmul_ms": mm / 1e3, "matmul_share": mm / total if total else None,
            "ops": len(ev), "calls": sum(e.count for e in ev),
            "top": [(e.key[:60], e.self_cpu_time_total / 1e3, e.count) for e in ev[:top]]}


def compile_profiles(decoders: dict, spec: ShapeSpec, prompt_len: int, seed: int = 0) -> dict[str, dict]:
    """`step_profile` of one prefill step and one decode step of each decoder (from `compile_study`), keyed
    "<variant> prefill" / "<variant> decode": where each step's time goes."""
    from labkit.core.models import prompt_ids

    out = {}
    for name, dec in decoders.items():
        dev = next(dec.model.parameters()).device
        ids = prompt_ids(prompt_len, vocab_size=spec.vocab_size, seed=seed).to(dev)
        pos, nxt = torch.arange(prompt_len, device=dev), torch.tensor([prompt_len], device=dev)
        def prefill(dec=dec, ids=ids, pos=pos):
            dec.cache.reset()
            return dec._step(ids.clone(), pos)

        def decode(dec=dec, nxt=nxt):  # the same step each time: rewind the cache to the prompt, in place
            for layer in dec.cache.layers:
                layer.cumulative_length.fill_(prompt_len)
            return dec._step(tok, nxt)

        out[f"{name} prefill"] = step_profile(prefill)
        with torch.inference_mode():
            tok = prefill().argmax(-1, keepdim=True)
        out[f"{name} decode"] = step_profile(decode)
    return out


def compile_explanation(rows: pd.DataFrame, profiles: dict[str, dict]) -> list[str]:
    """A sentence for each compiled row and phase that is not faster than eager, built from what was measured:
    recompiles and graph breaks (counted), and the eager step's share of time in matrix-multiply library
    calls, which the compiled graph makes too (so compiling can only shorten the rest)."""
    out = []
    for _, r in rows.iterrows():
        for ph in ("prefill", "decode"):
            x = r.get(f"x_{ph}_vs_eager")
            if r["variant"] == "eager" or x is None or x != x or x > 1 + 0.05:
                continue
            why = [f"{r['variant']} {ph} is {than(r[f'{ph}_vs_eager'], 'eager')}"]
            if r["steady_recompiles"]:
                why.append(f"{r['steady_recompiles']} recompile(s) happened in steady state")
            if r["graph_breaks"]:
                why.append(f"{r['graph_breaks']} graph break(s) leave eager Python between {r['graphs']} graphs")
            e, c = profiles.get(f"eager {ph}"), profiles.get(f"{r['variant']} {ph}")
            if e and e["matmul_share"] is not None:
                why.append(f"{e['matmul_share']:.0%} of the eager {ph} step is matrix multiplication, which the "
                           f"compiled graph hands to the same library, so fusing the other {1 - e['matmul_share']:.0%}"
                           f" can gain at most {1 / max(e['matmul_share'], 1e-9):.2f}x")
            if e and c:
                rest_e, rest_c = e["total_ms"] - e["matmul_ms"], c["total_ms"] - c["matmul_ms"]
                why.append(f"profiled once each, the rest went from {rest_e:.1f} ms in eager to {rest_c:.1f} ms "
                           f"compiled ({e['calls']} -> {c['calls']} op calls), and the matrix multiplications took "
                           f"{c['matmul_ms']:.1f} ms against eager's {e['matmul_ms']:.1f} ms")
            if not (r["steady_recompiles"] or r["graph_breaks"]):
                why.append("no recompiles or graph breaks: the compiled graph itself is no faster")
            out.append("; ".join(why) + ".")
    return out


# ---------------------------------------------------------------- precision at inference

PRECISIONS = ("fp32", "bf16", "fp16", "autocast-bf16", "autocast-fp16")


def precision_context(mode: str, device: str):
    """torch.autocast for the autocast modes (no GradScaler: that scales gradients, for training), else nothing."""
    if mode.startswith("autocast-"):
        return torch.autocast(device_type=str(device).split(":")[0], dtype={"bf16": torch.bfloat16,
                                                                              "fp16": torch.float16}[mode[9:]])
    return nullcontext()


def precision_model(fp32_model, mode: str):
    """The model for `mode`: a cast copy for fp32/bf16/fp16, the fp32 model itself for autocast."""
    if mode not in PRECISIONS:
        raise ValueError(f"unknown precision {mode!r}; choose one of {list(PRECISIONS)}")
    if mode in ("fp32",) or mode.startswith("autocast"):
        return fp32_model
    return copy.deepcopy(fp32_model).to({"bf16": torch.bfloat16, "fp16": torch.float16}[mode])


def precision_speed(fp32_model, spec: ShapeSpec, layers: int, modes: list[str], prompt_len: int, new_tokens: int,
                    rounds: int = 2, card: Card | None = None, seed: int = 0, progress: bool = True,
                    models_out: dict | None = None) -> pd.DataFrame:
    """Each precision on the speed model: weights held, peak memory of a prefill above them (allocator view)
    and the process's peak RSS growth, then TTFT and time per output token side by side (`generate`)."""
    import pandas as pd

    from labkit.core.bench import generate_timed
    from labkit.core.models import prompt_ids, weight_bytes
    from labkit.core.roofline import decode_floor, prefill_floor

    dev = next(fp32_model.parameters()).device
    ids = prompt_ids(prompt_len, vocab_size=spec.vocab_size, seed=seed).to(dev)
    rows, run = {}, {}
    for mode in modes:
        m = precision_model(fp32_model, mode)
        if models_out is not None:
            models_out[mode] = m

        def prefill(m=m, mode=mode):
            with precision_context(mode, dev):
                return m(input_ids=ids, use_cache=True, logits_to_keep=1).logits

        with torch.inference_mode():  # one call: the allocator's peak, and the process's RSS peak around it
            (_, peak), rss = memory.rss_peak_during(lambda prefill=prefill: memory.peak_during(prefill, dev))
        rss = rss if str(dev) == "cpu" else None
        wb = weight_bytes(m)
        rows[mode] = {"precision": mode, "weights_MiB": wb / MiB, "prefill_peak_MiB": peak.peak / MiB,
                      "total_peak_MiB": (wb + peak.peak) / MiB,
                      "rss_peak_growth_MiB": rss / MiB if rss is not None else None}

        def gen(m=m, mode=mode):
            with precision_context(mode, dev):
                rt = generate_timed(m, ids, new_tokens)[0]
            return {"ttft": rt.ttft, "tpot": rt.tpot}

        run[mode] = gen
    with torch.inference_mode():
        r = run_rounds(run, rounds, device=dev, progress=progress, desc="precision")
    for mode, row in rows.items():
        row.update({"prefill_ms": r.median(mode, "ttft") * 1e3, "decode_ms": r.median(mode, "tpot") * 1e3,
                    "cold_s": r.cold[mode]["s"], "steady_s": r.median(mode)})
        row["cold_over_warm"] = row["cold_s"] / row["steady_s"]
        if "fp32" in run and mode != "fp32":
            for ph, key in (("prefill", "ttft"), ("decode", "tpot")):
                ratio = r.ratio("fp32", mode, key)
                row[f"x_{ph}_vs_fp32"], row[f"{ph}_vs_fp32"] = ratio.value, ratio.words()
        if card is not None:
            dt = "fp32" if mode == "fp32" or mode.startswith("autocast") else mode
            cdt = mode[9:] if mode.startswith("autocast") else dt  # autocast computes in 16 bits, reads fp32
            pf = prefill_floor(spec, cdt, card, prompt_len, layers=layers)
            df = decode_floor(spec, dt, card, prompt_len + new_tokens // 2, layers=layers)
            row["prefill_floor_ms"], row["decode_floor_ms"] = pf.seconds * 1e3, df.seconds * 1e3
            row["decode_fraction_of_floor"] = df.seconds / (row["decode_ms"] / 1e3)
    out = pd.DataFrame(list(rows.values()))
    out.attrs["load"] = r.load
    return out


def precision_quality(fp32_model, tokenizer, text: str, modes: list[str], max_tokens: int | None = None,
                      progress: bool = True) -> pd.DataFrame:
    """Held-out perplexity of the trained model in each precision (autocast runs the fp32 model under it)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from labkit.core.quality import perplexity

    dev = next(fp32_model.parameters()).device
    rows = []
    for mode in tqdm(modes, desc="perplexity", disable=not progress):
        m = precision_model(fp32_model, mode)
        with precision_context(mode, dev):
            p = perplexity(m, tokenizer, text, max_tokens=max_tokens)
        rows.append({"precision": mode, "perplexity": p["perplexity"], "tokens": p["tokens"]})
        del m
    df = pd.DataFrame(rows)
    df["ppl_vs_fp32"] = df["perplexity"] / df.loc[df["precision"] == "fp32", "perplexity"].iloc[0]
    return df


# ---------------------------------------------------------------- the KV cache

def kv_model(shape_name: str, layers: int = 1, dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """A model whose attention has `shape_name`'s real KV layout (heads, KV heads, head dim: all a cache
    stores) around a small hidden size, MLP and vocabulary: its KV cache per layer is the real model's, and it
    builds in a moment (a 13B-wide layer takes seconds to initialize)."""
    from transformers import AutoModelForCausalLM

    from labkit.core.models import _config_for

    spec = shape(shape_name)
    cfg = _config_for(replace(spec, vocab_size=512, intermediate_size=64), layers)
    cfg.hidden_size, cfg.head_dim = 256, spec.head_dim  # q/k/v still project to heads x head_dim
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa").eval()


def kv_measured(shape_names: list[str], tokens: list[int], dtype: torch.dtype = torch.bfloat16,
                seed: int = 0) -> pd.DataFrame:
    """The KV cache of a real prefill against the formula, per shape and length: bytes the cache's tensors
    hold after the prefill, bytes the allocator still had handed out at its end (the allocation), and
    `ShapeSpec.kv_bytes_per_token` for the one layer built; `full_model_MiB` scales the measured bytes to
    every layer."""
    import pandas as pd
    from transformers import DynamicCache

    from labkit.core.models import prompt_ids

    rows = []
    for name in shape_names:
        spec = shape(name)
        m = kv_model(name, 1, dtype, seed)
        for n in tokens:
            ids = prompt_ids(n, vocab_size=512, seed=seed)
            cache = DynamicCache(config=m.config)

            def fn(m=m, ids=ids, cache=cache):
                out = m(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                del out  # keep only what the cache holds

            with torch.inference_mode():
                _, peak = memory.peak_during(fn)
            held = memory.cache_bytes(cache)
            formula = spec.kv_bytes_per_token(torch.empty((), dtype=dtype).itemsize, layers=1) * n
            rows.append({"shape": name, "kv_heads": spec.num_key_value_heads, "heads": spec.num_attention_heads,
                         "head_dim": spec.head_dim, "tokens": n, "formula_bytes": int(formula),
                         "cache_bytes": held, "allocated_bytes": peak.net, "measured/formula": held / formula,
                         "bytes_per_token_layer": held / n,
                         "full_model_MiB": held * spec.num_hidden_layers / MiB})
            del cache
        del m
    return pd.DataFrame(rows)


def kv_context_table(shape_names: list[str], contexts: list[int], dtype: str = "bf16") -> pd.DataFrame:
    """KV cache of the full models at each context (formula: roofline.kv_cache_bytes), next to the weights."""
    import pandas as pd

    from labkit.core.roofline import kv_cache_bytes, weight_bytes

    rows = []
    for name in shape_names:
        spec = shape(name)
        for c in contexts:
            kv = kv_cache_bytes(spec, dtype, c)
            rows.append({"shape": name, "context": c, "kv_GiB": kv / GiB,
                         "weights_GiB": weight_bytes(spec, dtype) / GiB,
                         "kv_share": kv / (kv + weight_bytes(spec, dtype))})
    return pd.DataFrame(rows)


@torch.inference_mode()
def _chunked_eval(model, ids: torch.Tensor, cache, chunk: int) -> tuple[float, torch.Tensor]:
    """Sum of NLL over ids[1:] with the text fed `chunk` tokens at a time through `cache`: every token after
    the first chunk attends to keys and values read back from the cache. Returns (nll sum, argmax per pos)."""
    nll, preds = 0.0, []
    n = ids.shape[1]
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        logits = model(input_ids=ids[:, s:e], past_key_values=cache, use_cache=True).logits.float()[0]
        preds.append(logits.argmax(-1))
        tgt = ids[0, s + 1 : e + 1]
        lp = torch.log_softmax(logits[: tgt.numel()], dim=-1)
        nll += float(-lp.gather(1, tgt[:, None]).sum())
    return nll, torch.cat(preds)[: n - 1]


def kv_quant_study(model, tokenizer, kinds: list[str], window: int = 1024, windows: int = 2, chunk: int = 64,
                   progress: bool = True) -> pd.DataFrame:
    """Each KV cache kind on the trained model: the bytes it holds after a window of `window` tokens, and the
    quality of next-token prediction when held-out text (`windows` seeded windows of data/eval/heldout.txt) is
    fed `chunk` tokens at a time, so attention reads the stored (quantized) keys and values: perplexity and the
    share of positions whose top token matches the first kind's (list the full-precision cache first)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from labkit.core.models import prompt_ids

    ids = prompt_ids(window, batch=windows, tokenizer=tokenizer, seed=0)
    reasons = memory.kv_cache_kinds()
    ref_preds, rows = None, []
    for kind in tqdm(kinds, desc="KV caches", disable=not progress):
        if reasons.get(kind):
            rows.append({"cache": kind, "status": f"skipped: {reasons[kind]}"})
            continue
        nll, count, preds, held = 0.0, 0, [], None
        for w in range(windows):
            cache = memory.make_cache(kind, model)
            s, p = _chunked_eval(model, ids[w : w + 1], cache, chunk)
            nll, count = nll + s, count + window - 1
            preds.append(p)
            held = held or memory.cache_bytes(cache)
        preds = torch.cat(preds)
        ref_preds = preds if ref_preds is None else ref_preds
        rows.append({"cache": kind, "status": "ok", "bytes_held": held, "bytes_per_token": held / window,
                     "perplexity": math.exp(nll / count), "top1_agreement": float((preds == ref_preds).float().mean())})
    df = pd.DataFrame(rows)
    if not df.empty and "bytes_held" in df:
        base = df["bytes_held"].iloc[0]
        df["bytes_vs_fp"] = df["bytes_held"] / base
        df["ppl_vs_fp"] = df["perplexity"] / df["perplexity"].iloc[0]
    return df


def plot_kv(ctx: pd.DataFrame, measured: pd.DataFrame | None = None):
    """KV cache of the full models against context (formula lines, log-log) with the measured points scaled to
    every layer, and each model's weights as a dotted level: where the cache outgrows the model."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for i, (name, g) in enumerate(ctx.groupby("shape", sort=False)):
        ax.plot(g["context"], g["kv_GiB"], color=f"C{i}", label=f"{name} KV cache (formula)")
        ax.axhline(g["weights_GiB"].iloc[0], color=f"C{i}", ls=":", lw=1)
        if measured is not None:
            m = measured[measured["shape"] == name]
            ax.scatter(m["tokens"], m["full_model_MiB"] / 1024, color=f"C{i}", zorder=3,
                       label=f"{name} measured (1 layer x {shape(name).num_hidden_layers})")
    ax.set(xscale="log", yscale="log", xlabel="context (tokens, batch 1)", ylabel="GiB (16-bit)",
           title="KV cache against context: formula (lines), measured (points); dotted: the weights")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def empty_cache_rows(fp32_model, spec: ShapeSpec, prompt_len: int, device: str, seed: int = 0) -> list[dict]:
    """CUDA only: what torch.cuda.empty_cache() does around a prefill, fp32 and under autocast: allocated and
    reserved memory before and after it, and the peak. On other devices one row per measurement, skipped with
    the reason."""
    from labkit.core.models import prompt_ids, weight_bytes

    modes = ("fp32", "autocast", "autocast+empty_cache")
    if not str(device).startswith("cuda"):
        why = ("skipped: torch.cuda.empty_cache() returns the CUDA caching allocator's unused blocks to the driver; "
               f"this device is {device}, whose allocator keeps no such cache (freed blocks go back to malloc)")
        return [{"measurement": m, "status": why} for m in modes]
    ids = prompt_ids(prompt_len, vocab_size=spec.vocab_size, seed=seed).to(device)
    ac = "autocast-fp16" if not torch.cuda.is_bf16_supported() else "autocast-bf16"
    rows = []
    for m in modes:
        def fn(m=m):
            if m.endswith("empty_cache"):
                torch.cuda.empty_cache()  # the guide's "regular" call, right before the forward
            with torch.inference_mode(), precision_context(ac if m != "fp32" else "fp32", device):
                return fp32_model(input_ids=ids, logits_to_keep=1).logits

        r = memory.cuda_empty_cache_effect(fn, device)
        rows.append({"measurement": m, "status": "ok", "peak_MiB": r["peak_bytes"] / MiB,
                     "total_peak_MiB": (r["peak_bytes"] + weight_bytes(fp32_model)) / MiB,
                     **{k.replace("_before", "_MiB").replace("_after", "_MiB_after_empty_cache"): v / MiB
                        for k, v in r.items() if k != "peak_bytes"}})
    return rows


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
