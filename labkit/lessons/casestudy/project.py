"""Projecting each stage from the measured few layers to the full 13B (`project`): prefill scaled by FLOPs,
decoding by the bytes a step reads, and, with a roofline card, each stage's idle-TTFT floor and throughput
ceiling for the trace and the fraction of each it reached.
"""

from __future__ import annotations

from collections.abc import Sequence

from labkit.core import models, planner, roofline
from labkit.core.floors import Rate, fastest_rates, of_floor, of_floors
from labkit.lessons.casestudy.stages import compute_dtype
from labkit.serve.workload import Request

machine_card = planner.machine_card  # notebook 07 calls it as casestudy.machine_card


def _rates(n_req: int, n_out: int, prefill_flops: float, read_bytes: float, compute: str, peak: float | None,
           bandwidth_gbps: float, batch: int, source: str) -> list[Rate]:
    """The rates a trace's time floor is the sum of: every prefill at `prefill_flops` / the matmul rate of the
    stage's compute type, then every other decode step reading the weights once at the bandwidth for up to `batch`
    sequences."""
    out = [Rate("memory bandwidth", bandwidth_gbps * 1e9, (n_out - n_req) * read_bytes / batch, "B/s", source)]
    if peak:
        out.insert(0, Rate(f"{compute} matmul", peak, n_req * prefill_flops, "FLOP/s", source))
    return out


def project(rows: list[dict], stage_models: dict, spec: models.ShapeSpec, layers: int,
            trace: Sequence[Request], max_batch: int, hw: roofline.Card | None) -> list[dict]:
    """Each stage projected from `layers` to the full depth, prefill and decode apart: a replay's time is split
    into its prefills (requests x the measured idle TTFT), scaled by the FLOPs of a full prefill (compute-bound),
    and the rest (decoding), scaled by the bytes a full decode step reads (the stage's own stored weights; of a MoE
    model's experts those a step of its batch routes to, roofline.measured_parts).
    Assumes cost linear in layers. With `hw` (a roofline.Card: notebook 01's profile, or its rates timed in this
    run, `in_run_card`) each row also gets the floors, at the measured depth and at the full one: the idle TTFT
    floor (prefill FLOPs / the matmul rate of the stage's compute type) and the trace's throughput ceiling, and the
    fraction of each reached; a floor a stage beat is re-derived from the fastest matmul rate any stage's idle
    prefill reached, with its reason beside the fraction (labkit.core.floors)."""
    full = spec.num_hidden_layers
    prompt_len, n_req = trace[0].prompt_len, len(trace)
    n_out = sum(req.output_len for req in trace)
    flops_l = roofline.forward_flops(spec, prompt_len, layers=layers)
    flops_f = roofline.forward_flops(spec, prompt_len)
    out = []
    for r in rows:
        m = stage_models[r["stage"]]
        parts_full = roofline.measured_parts(m, full)
        batch = max_batch if r["server"] == "engine" else 1  # a MoE step reads the experts its batch routes to
        read_l = roofline.decode_read_bytes(roofline.measured_parts(m, layers, tokens=batch))
        read_f = roofline.decode_read_bytes(roofline.measured_parts(m, full, tokens=batch))
        total_s = n_out / r["output_throughput"]
        prefill_s = min(total_s, n_req * r["ttft_idle_ms"] / 1e3)
        total_full = prefill_s * flops_f / flops_l + (total_s - prefill_s) * read_f / read_l
        out.append({"stage": r["stage"], "ttft_idle_ms_full": r["ttft_idle_ms"] * flops_f / flops_l,
                    "output_throughput_full": n_out / total_full, "prefill_share": prefill_s / total_s,
                    "weights_gib_full": sum(parts_full.values()) / 2**30, "_read": (read_l, read_f)})
    if hw is not None:
        _floors(out, rows, hw, flops_l, flops_f, n_req, n_out, max_batch)
    return [{k: v for k, v in row.items() if k != "_read"} for row in out]


def _floors(out: list[dict], rows: list[dict], hw: roofline.Card, flops_l: float, flops_f: float, n_req: int,
            n_out: int, max_batch: int) -> None:
    """`project`'s floors and ceilings, each fraction through labkit.core.floors (a beaten floor re-derived)."""
    src = hw.source or "the roofline card"
    compute = [compute_dtype(r) for r in rows]
    ttft = [Rate(f"{c} matmul", hw.peak(c), flops_l, "FLOP/s", src) if hw.peak(c) else None for c in compute]
    has = [i for i, t in enumerate(ttft) if t is not None]
    fastest = fastest_rates((ttft[i].name, flops_l, rows[i]["ttft_idle_ms"] / 1e3) for i in has)
    fr = dict(zip(has, of_floors([rows[i]["ttft_idle_ms"] / 1e3 for i in has], [[ttft[i]] for i in has]),
                  strict=True))
    for i, (row, r, c) in enumerate(zip(out, rows, compute, strict=True)):
        batch = max_batch if r["server"] == "engine" else 1
        (read_l, read_f), peak = row["_read"], hw.peak(c)
        for tag, flops, read, tput in (("", flops_l, read_l, r["output_throughput"]),
                                       ("_full", flops_f, read_f, row["output_throughput_full"])):
            f = of_floor(n_out / tput, _rates(n_req, n_out, flops, read, c, peak, hw.bandwidth_gbps, batch, src),
                         combine="sum", fastest=fastest)
            row[f"throughput_ceiling{tag}"] = n_out / f.floor_s
            row.update(f.fields(f"fraction_of_ceiling{tag}"))
        if i in fr:
            row["ttft_floor_ms_full"] = fr[i].floor_s * 1e3 * flops_f / flops_l
            row.update(fr[i].fields("ttft_fraction_of_floor"))
        else:
            row["ttft_floor_ms_full"], row["ttft_fraction_of_floor"] = None, None
