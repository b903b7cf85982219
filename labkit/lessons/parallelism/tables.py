"""Notebook 04's tables, built from the ranks' results: TP against one process, the all-reduce fit, the
interconnect a split needs, C14's granularity, the pipeline bubble, DP replicas, memory per rank, and the planner
for the guide's sizes on the reference cards. Each table is a plain function of the results, so it is tested
without starting any rank.
"""

from __future__ import annotations

import statistics
from dataclasses import replace

from labkit.core.bench import Rounds
from labkit.core.models import ShapeSpec, shape
from labkit.core.units import GiB, MiB
from labkit.lessons.parallelism.config import LINKS_GBPS, PLANNED


def rounds_of(d: dict) -> Rounds:
    """A Rounds measured on rank 0, rebuilt from its JSON form."""
    return Rounds(d["names"], d["cold"], d["values"], d.get("load", {}))


def _split_name(r: Rounds, prefix: str) -> str:
    return next(n for n in r.names if n.startswith(prefix))


def _refs(r: Rounds) -> list[str]:
    return [n for n in r.names if not n.startswith(("TP", "PP", "DP"))]


def tp_table(res: dict, spec: ShapeSpec, layers: int, hw, prompt_len: int, new_tokens: int):
    """Per phase (the prefill, one decode step): each run's median time, TP's split into compute and collectives,
    the roofline floor of the model that was built on this machine (`hw`) and the fraction of it reached, and TP
    against each one-process run (measured side by side, median of per-round ratios)."""
    import pandas as pd

    from labkit.core.floors import of_floors
    from labkit.core.roofline import decode_floor, prefill_floor

    r, eq = rounds_of(res["tp"]), res["equality"]
    tp = _split_name(r, "TP=")
    floors = {"prefill": prefill_floor(spec, "fp32", hw, prompt_len, 1, layers),
              "decode": decode_floor(spec, "fp32", hw, prompt_len + new_tokens // 2, 1, layers)}
    comm = {"prefill": eq["comm_per_prefill"], "decode": eq["comm_per_decode_step"]}
    runs = [(phase, name) for phase in ("prefill", "decode") for name in r.names]
    # a floor beaten by a run is re-derived from the best rate any run reached (labkit.core.floors)
    fr = of_floors([r.median(name, phase) for phase, name in runs], [floors[phase] for phase, _ in runs])
    rows = []
    for (phase, name), f in zip(runs, fr, strict=True):
        t = r.median(name, phase)
        c = r.median(name, f"{phase}_comm") if name == tp else None
        rows.append({"phase": phase, "run": name, "ms": 1e3 * t, "compute ms": 1e3 * (t - (c or 0.0)),
                     "collectives ms": None if c is None else 1e3 * c,
                     "collectives": comm[phase][0] if name == tp else None,
                     "MiB through collectives": comm[phase][1] / MiB if name == tp else None,
                     "floor ms": 1e3 * f.floor_s, "fraction of floor": f.fraction,
                     f"{tp} vs this run": None if name == tp else r.ratio(name, tp, phase).words()})
        if f.reason:
            rows[-1]["fraction of floor_reason"] = f.reason
    return pd.DataFrame(rows)


def bus_factor(world_size: int) -> float:
    """Bytes each rank's link carries per byte all-reduced by a ring: 2(n-1)/n (nccl-tests' bus bandwidth)."""
    return 2 * (world_size - 1) / world_size


def allreduce_fit(rows: list[dict], world_size: int, small_bytes: int = 4096) -> dict:
    """This machine's all-reduce as a latency and a bandwidth: the latency floor is the median time of the messages
    up to `small_bytes` (where the bytes cost nothing next to it), the bus bandwidth (nccl-tests' definition:
    size x 2(n-1)/n / time) the largest message's after that floor. `allreduce_time` predicts any size."""
    small = [r["seconds"] for r in rows if r["bytes"] <= small_bytes]
    small = small or [min(rows, key=lambda r: r["bytes"])["seconds"]]
    large = max(rows, key=lambda r: r["bytes"])
    latency = statistics.median(small)
    busbw = large["bytes"] * bus_factor(world_size) / max(large["seconds"] - latency, 1e-12)
    return {"latency_s": latency, "busbw_gbps": busbw / 1e9, "world_size": world_size, "small_bytes": small_bytes,
            "largest_bytes": large["bytes"], "largest_s": large["seconds"]}


def allreduce_time(fit: dict, nbytes: float) -> float:
    """The fitted time of one all-reduce of `nbytes`: latency + bytes on the link / bus bandwidth."""
    return fit["latency_s"] + nbytes * bus_factor(fit["world_size"]) / (fit["busbw_gbps"] * 1e9)


def interconnect(res: dict, fit: dict) -> list[dict]:
    """When would TP pay for this shape? Per phase and one-process run: TP pays if its collectives fit in the time
    its split compute saves (budget = that run's time - TP's compute). From the budget: the link bandwidth needed
    at zero latency and the latency allowed per collective at infinite bandwidth; next to them, the collectives
    measured inside the model, the all-reduce sweep's prediction for the same bytes, and the time each datasheet
    link needs to carry them (bandwidth only: datasheets give no latency)."""
    r, eq = rounds_of(res["tp"]), res["equality"]
    tp, f = _split_name(r, "TP="), bus_factor(fit["world_size"])
    rows = []
    for phase, (k, nbytes) in (("prefill", eq["comm_per_prefill"]), ("decode", eq["comm_per_decode_step"])):
        compute = r.median(tp, phase) - r.median(tp, f"{phase}_comm")
        for ref in _refs(r):
            budget = r.median(ref, phase) - compute
            row = {"phase": phase, "against": ref, "its ms": 1e3 * r.median(ref, phase), "TP compute ms": 1e3 * compute,
                   "budget ms": 1e3 * budget, "collectives": k, "MiB": nbytes / MiB,
                   "measured in the model ms": 1e3 * r.median(tp, f"{phase}_comm"),
                   "all-reduce sweep predicts ms": 1e3 * k * allreduce_time(fit, nbytes / max(k, 1)),
                   "needed GB/s at zero latency": nbytes * f / budget / 1e9 if budget > 0 else None,
                   "allowed us per collective": 1e6 * budget / max(k, 1) if budget > 0 else None}
            for link, gbps in LINKS_GBPS.items():
                row[f"{link} ms"] = 1e3 * nbytes * f / (gbps * 1e9)
            rows.append(row)
    return rows


def link_need(model: str, card: str, tokens: int, dtype: str = "fp16", tp: int = 2) -> list[dict]:
    """Two GPUs from the datasheets: TP splits a step's floor (roofline, whole model on one `card`) over `tp`
    cards, and adds 2 all-reduces per layer of tokens x hidden activations. The link pays if it carries them in
    the time saved: the bandwidth that takes at zero latency and the latency allowed at infinite bandwidth,
    for the prefill of `tokens` and one decode step at that context."""
    from labkit.core.roofline import act_bytes, decode_floor, prefill_floor
    from labkit.core.roofline import card as ref_card

    spec, hw = shape(model), ref_card(card)
    rows = []
    for phase, floor, n in (("prefill", prefill_floor(spec, dtype, hw, tokens), tokens),
                            ("decode", decode_floor(spec, dtype, hw, tokens), 1)):
        saved = floor.seconds * (1 - 1 / tp)
        k = 2 * spec.num_hidden_layers
        nbytes = k * n * spec.hidden_size * act_bytes(dtype)
        row = {"model": model, "cards": f"{tp}x {card}", "phase": f"{phase} ({tokens} tokens)" if phase == "prefill"
               else f"decode step (context {tokens})", "floor on one card ms": 1e3 * floor.seconds,
               "saved by TP ms": 1e3 * saved, "collectives": k, "MiB": nbytes / MiB,
               "needed GB/s at zero latency": nbytes * bus_factor(tp) / saved / 1e9,
               "allowed us per collective": 1e6 * saved / k}
        for link, gbps in LINKS_GBPS.items():
            row[f"{link} ms"] = 1e3 * nbytes * bus_factor(tp) / (gbps * 1e9)
        rows.append(row)
    return rows


def granularity_rows(res: dict) -> list[dict]:
    """C14: per hidden size and phase, one rank's share of the machine against TP over all the ranks: the compute
    TP saves (one rank's time - TP's compute) against the collectives it adds."""
    out = []
    for g in res["granularity"]:
        r = rounds_of(g["rounds"])
        one, tp = _refs(r)[0], "TP"
        for phase in ("prefill", "decode"):
            t1, t, c = r.median(one, phase), r.median(tp, phase), r.median(tp, f"{phase}_comm")
            saved = t1 - (t - c)
            out.append({"hidden": g["hidden"], "phase": phase,
                        "shard MiB per rank per layer": g["layer_weight_bytes"] / g["layers"] / MiB / g["tp"],
                        "one rank ms": 1e3 * t1, "TP ms": 1e3 * t, "TP compute ms": 1e3 * (t - c),
                        "collectives ms": 1e3 * c, "compute saved ms": 1e3 * saved,
                        "collectives / saved": c / saved if saved > 0 else None,
                        "TP against one rank": r.ratio(one, tp, phase).words()})
    return out


def bubble_rows(res: dict, stages: int) -> list[dict]:
    """Measured bubble (1 - mean stage busy time / step time) against GPipe's (S - 1) / (M + S - 1), and the step
    against one process."""
    r = rounds_of(res["pp"])
    one = _refs(r)[0]
    rows = []
    for name in r.names:
        if name == one:
            continue
        m = int(name.split(", ")[1].split()[0])
        rows.append({"micro-batches": m, "measured bubble": r.median(name, "bubble"),
                     "formula (S-1)/(M+S-1)": (stages - 1) / (m + stages - 1), "step ms": 1e3 * r.median(name),
                     "busiest stage ms": 1e3 * r.median(name, "busy_max"), f"{one} ms": 1e3 * r.median(one),
                     "PP against one process": r.ratio(one, name).words(),
                     "max logit diff": max(r.values[name]["max_logit_diff"])})
    return rows


def dp_row(res: dict) -> dict:
    """Two replicas' throughput on halves of the trace against one process serving it all."""
    d = res["dp"]
    r = rounds_of(d["rounds"])
    one, dp = r.names
    ratio = r.ratio(one, dp, "throughput", higher_is_better=True)
    return {f"{one} tok/s": r.median(one, "throughput"), f"{dp} tok/s": r.median(dp, "throughput"),
            "replicas against one process": ratio.words("more throughput", "less throughput"), "ratio": ratio.value,
            "conclusive": ratio.conclusive, "same tokens": d["dp_tokens_equal"], "requests": d["requests"],
            "output tokens": d["output_tokens"]}


def memory_rows(res: dict, spec: ShapeSpec, layers: int, context: int) -> list[dict]:
    """Bytes each rank holds under each split, measured on the ranks, next to the planner's share of the model
    that was built (its layers): weights / n and KV cache / n for TP and PP, everything for a DP replica. PP's KV
    cache is not measured: this pipeline recomputes its window instead of caching."""
    from labkit.core.planner import memory_plan

    plan = memory_plan(replace(spec, name=f"{spec.name} ({layers} layers)", num_hidden_layers=layers), "fp32",
                       context)
    n = len(res["memory"])
    splits = (("one process", "single", 1), (f"TP={n}", "tp", n), (f"PP={n}", "pp", n), (f"DP={n} replica", "dp", 1))
    rows = []
    for split, key, share in splits:
        for m in res["memory"]:
            if key == "single" and m["rank"] != 0:
                continue
            kv = {"single": m.get("single_kv"), "tp": m.get("tp_kv")}.get(key)
            rows.append({"split": split, "rank": m["rank"], "weights MiB": m[key] / MiB,
                         "planner weights MiB": plan.weights / share / MiB,
                         "measured / planner": m[key] / (plan.weights / share),
                         "KV cache KiB": kv / 1024 if kv else None,
                         "planner KV KiB": plan.kv_cache / share / 1024 if key in ("single", "tp") else None})
    return rows


def split_fractions(res: dict) -> dict[str, float]:
    """Each split's largest per-rank weight bytes as a fraction of the whole model's: what C3 and C8 are about."""
    mem = res["memory"]
    whole = mem[0]["single"]
    n = len(mem)
    return {f"TP={n}": max(m["tp"] for m in mem) / whole, f"PP={n}": max(m["pp"] for m in mem) / whole,
            f"DP={n}": max(m["dp"] for m in mem) / whole}


def reference_rows(models_: tuple[str, ...] = PLANNED, dtype: str = "fp16", context: int = 4096,
                   batch: int = 1) -> list[dict]:
    """The planner for the guide's sizes on the reference cards (datasheets): the fewest cards that hold each with
    TP alone inside one 8-card node, or, beyond a node, TP 8 x PP stages across nodes."""
    from labkit.core.planner import cards_needed, memory_plan, supports, usable_bytes
    from labkit.core.roofline import REFERENCE_CARDS

    rows = []
    for name in models_:
        plan = memory_plan(name, dtype, context, batch)
        row = {"model": name, "dtype": dtype, "context": context, "batch": batch, "total GiB": plan.total / GiB}
        for hw in REFERENCE_CARDS.values():
            if not supports(hw, dtype):
                row[hw.name] = f"no {dtype}"
                continue
            n = cards_needed(plan, hw)
            more = next((k for k in (16, 32, 64) if plan.per_card(k) <= usable_bytes(hw)), None)
            row[hw.name] = f"{n} (TP {n})" if n else (f"{more} (TP 8 x PP {more // 8})" if more else "> 64")
        rows.append(row)
    return rows
