"""torch.compile of a static-KV-cache decoder: the cold start apart from the steady state.

`compile_study` runs `decode.StaticDecoder` eager and under each of inductor's option sets (`COMPILE_VARIANTS`),
counting graphs, graph breaks and recompiles from torch's compile metrics; `step_profile` / `compile_profiles`
say where one step's time goes, and `compile_explanation` turns both into sentences for each compiled phase
that did not beat eager.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from labkit.core.bench import run_rounds
from labkit.core.models import ShapeSpec
from labkit.core.roofline import Card
from labkit.core.units import dtype_name, than
from labkit.techniques import memory

if TYPE_CHECKING:
    import pandas as pd


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

    from labkit.core.floors import of_floors
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
    if pf is not None:  # a floor beaten by any variant is re-derived from the best rate one reached
        both = [(row, ph, fl) for ph, fl in (("prefill", pf), ("decode", df)) for row in rows.values()]
        fr = of_floors([row[f"{ph}_ms"] / 1e3 for row, ph, _ in both], [fl for _, _, fl in both],
                       compute=f"{dt} matmul")
        for (row, ph, _), f in zip(both, fr, strict=True):
            row.update({f"{ph}_floor_ms": f.floor_s * 1e3, **f.fields(f"{ph}_fraction_of_floor")})
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

    memory.quiet_profiler()
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
            return dec.step(ids.clone(), pos)

        def decode(dec=dec, nxt=nxt):  # the same step each time: rewind the cache to the prompt, in place
            for layer in dec.cache.layers:
                layer.cumulative_length.fill_(prompt_len)
            return dec.step(tok, nxt)

        out[f"{name} prefill"] = step_profile(prefill)
        with torch.inference_mode():
            tok = prefill().argmax(-1, keepdim=True)
        out[f"{name} decode"] = step_profile(decode)
    return out


def profile_table(profiles: dict[str, dict], top: int = 3) -> pd.DataFrame:
    """`compile_profiles` as one row per step: total, matmul time and share, op calls and the `top` ops."""
    import pandas as pd

    return pd.DataFrame([{"step": k, **{c: v[c] for c in ("total_ms", "matmul_ms", "matmul_share", "calls")},
                          "top ops (self ms, calls)": v["top"][:top]} for k, v in profiles.items()])


def compile_explanation(rows: pd.DataFrame, profiles: dict[str, dict]) -> list[str]:
    """A sentence for each compiled row and phase that is not faster than eager, built from what was measured:
    recompiles and graph breaks (counted), and the eager step's share of time in matrix-multiply library
    calls, which the compiled graph makes too (so compiling can only shorten the rest)."""
    out = []
    for _, r in rows.iterrows():
        for ph in ("prefill", "decode"):
            x = r.get(f"x_{ph}_vs_eager")
            if r["variant"] == "eager" or x is None or x != x or (x > 1 and r.get(f"{ph}_conclusive")):
                continue  # conclusively faster: nothing to explain
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
