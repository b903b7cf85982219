"""Projecting each stage from the measured few layers to the full 13B (`project`): prefill scaled by FLOPs,
decoding by the bytes a step reads, and, with a roofline card, each stage's idle-TTFT floor and throughput
ceiling for the trace and the fraction of each it reached.
"""

from __future__ import annotations

from collections.abc import Sequence

from labkit.core import models, planner, roofline
from labkit.lessons.casestudy.stages import compute_dtype
from labkit.serve.workload import Request

machine_card = planner.machine_card  # notebook 07 calls it as casestudy.machine_card


def _ceiling(n_req: int, n_out: int, prefill_flops: float, read_bytes: float, peak: float | None,
             bandwidth_gbps: float, batch: int) -> tuple[float | None, float]:
    """(idle TTFT floor in s, the trace's throughput ceiling in tok/s): every prefill at FLOPs / peak, every
    decode step reading the weights once at the bandwidth for up to `batch` sequences."""
    ttft_floor = prefill_flops / peak if peak else None
    step_s = read_bytes / (bandwidth_gbps * 1e9)
    return ttft_floor, n_out / (n_req * (ttft_floor or 0.0) + (n_out - n_req) * step_s / batch)


def project(rows: list[dict], stage_models: dict, spec: models.ShapeSpec, layers: int,
            trace: Sequence[Request], max_batch: int, hw: roofline.Card | None) -> list[dict]:
    """Each stage projected from `layers` to the full depth, prefill and decode apart: a replay's time is split
    into its prefills (requests x the measured idle TTFT), scaled by the FLOPs of a full prefill (compute-bound),
    and the rest (decoding), scaled by the bytes a full decode step reads (the stage's own stored weights).
    Assumes cost linear in layers. With `hw` (a roofline.Card from notebook 01's profile) each row also gets the
    floors, at the measured depth and at the full one: the idle TTFT floor (prefill FLOPs / the probed matmul
    rate of the stage's compute type) and the trace's throughput ceiling, and the fraction of each reached."""
    full = spec.num_hidden_layers
    prompt_len, n_req = trace[0].prompt_len, len(trace)
    n_out = sum(req.output_len for req in trace)
    flops_l = roofline.forward_flops(spec, prompt_len, layers=layers)
    flops_f = roofline.forward_flops(spec, prompt_len)
    out = []
    for r in rows:
        parts_full = roofline.measured_parts(stage_models[r["stage"]], full)
        read_l = roofline.decode_read_bytes(roofline.measured_parts(stage_models[r["stage"]], layers))
        read_f = roofline.decode_read_bytes(parts_full)
        total_s = n_out / r["output_throughput"]
        prefill_s = min(total_s, n_req * r["ttft_idle_ms"] / 1e3)
        total_full = prefill_s * flops_f / flops_l + (total_s - prefill_s) * read_f / read_l
        row = {"stage": r["stage"], "ttft_idle_ms_full": r["ttft_idle_ms"] * flops_f / flops_l,
               "output_throughput_full": n_out / total_full, "prefill_share": prefill_s / total_s,
               "weights_gib_full": sum(parts_full.values()) / 2**30}
        if hw is not None:
            compute = compute_dtype(r)
            batch = max_batch if r["server"] == "engine" else 1
            floor_l, ceil_l = _ceiling(n_req, n_out, flops_l, read_l, hw.peak(compute), hw.bandwidth_gbps, batch)
            floor_f, ceil_f = _ceiling(n_req, n_out, flops_f, read_f, hw.peak(compute), hw.bandwidth_gbps, batch)
            row.update({"throughput_ceiling": ceil_l, "fraction_of_ceiling": r["output_throughput"] / ceil_l,
                        "ttft_floor_ms_full": floor_f * 1e3 if floor_f else None,
                        "ttft_fraction_of_floor": floor_l / (r["ttft_idle_ms"] / 1e3) if floor_l else None,
                        "throughput_ceiling_full": ceil_f,
                        "fraction_of_ceiling_full": row["output_throughput_full"] / ceil_f})
        out.append(row)
    return out
