"""The attention op and a whole prefill against sequence length, each next to its roofline floor.

`Layout` is a model's head layout; `attention_floor` / `roofline_speedup` / `length_for_speedup` predict what a
fused kernel can gain before anything runs; `plan_lengths` shows what the planner refuses; `attention_sweep` and
`prefill_sweep` time every backend side by side (`bench.run_rounds`) with its peak memory; `growth` reads the
measured growth exponent. A backend this machine cannot run is a row "skipped: <reason>", a length predicted not
to fit is "refused: <estimate>", never another kernel's numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from labkit.core.bench import run_rounds
from labkit.core.models import ShapeSpec, shape
from labkit.core.planner import PlanError
from labkit.core.roofline import Card, Floor
from labkit.core.units import GiB, MiB, dtype_name
from labkit.techniques import kernels, memory

if TYPE_CHECKING:
    import pandas as pd


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


def roofline_table(layout: Layout, lengths: list[int], cards: list[tuple[Card, str]]) -> pd.DataFrame:
    """`roofline_speedup` for each (card, dtype) in `cards`, one table: what a fused kernel can gain where."""
    import pandas as pd

    return pd.concat([pd.DataFrame(roofline_speedup(c, layout, lengths, dt)).assign(card=c.name, dtype=dt)
                      for c, dt in cards])


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
                    here[b].update({"x_vs_eager": ratio.value, "conclusive": ratio.conclusive,
                                    "vs_eager": "the reference" if b == "eager" else ratio.words()})
                if card is not None:
                    here[b]["_floor"] = attention_floor(card, lay, n, dtype_name(dtype), b)
        rows += here.values()
        del q, k, v, ref
    return pd.DataFrame(with_fractions(rows, f"{dtype_name(dtype)} matmul"))


def with_fractions(rows: list[dict], compute: str) -> list[dict]:
    """Each timed row's `floor_ms` and `fraction_of_floor` from the Floor it carries (`_floor`), a floor the
    measurement beat re-derived from the fastest rate any row of this sweep reached, with its reason beside it
    (labkit.core.floors)."""
    from labkit.core.floors import of_floors

    timed = [r for r in rows if "_floor" in r and r.get("ms")]
    for r, f in zip(timed, of_floors([r["ms"] / 1e3 for r in timed], [r["_floor"] for r in timed], compute=compute),
                    strict=True):
        r.update({"floor_ms": f.floor_s * 1e3, **f.fields("fraction_of_floor")})
    return [{k: v for k, v in r.items() if k != "_floor"} for r in rows]


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
                    here[impl].update({"x_vs_eager": ratio.value, "conclusive": ratio.conclusive,
                                       "vs_eager": "the reference" if impl == "eager" else ratio.words()})
                if fl is not None:
                    here[impl]["_floor"] = fl
        rows += here.values()
    model.set_attn_implementation("sdpa")
    return pd.DataFrame(with_fractions(rows, f"{dt} matmul"))
