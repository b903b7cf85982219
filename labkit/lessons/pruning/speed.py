"""Speed of each pruned variant on a shape-faithful model (real layer dimensions, few layers, random weights):
prefill (TTFT) and batch-1 decode (TPOT) against the dense model, every variant timed once per round in rotating
order (`bench.run_rounds`), next to what the roofline floor of the pruned shape predicts
(`shape_of`: the pruned dimensions priced exactly by labkit.core.roofline). A variant this machine cannot run or
hold in memory is a row "skipped: <reason>", never another variant's numbers.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from labkit.core.models import ShapeSpec, weight_bytes
from labkit.core.shapes import spec_of_config
from labkit.core.units import DTYPE_NAMES, MiB
from labkit.lessons.pruning.variants import Variant, describe_achieved
from labkit.techniques.prune import PruneSkipped, semi_structured_unsupported

if TYPE_CHECKING:
    import pandas as pd

    from labkit.core.bench import Ratio
    from labkit.core.roofline import Card


def shape_of(model: nn.Module, layers: int | None = None) -> ShapeSpec:
    """The dimensions of `model` (pruned or not) as a ShapeSpec for labkit.core.roofline, read from its config
    (`shapes.spec_of_config`) with `layers` decoder layers (default: as built). Pruned heads keep their width, so
    the head dimension is always explicit: the roofline then prices a narrower attention exactly."""
    c = model.config
    spec = spec_of_config(c, getattr(c, "name_or_path", "") or "model")
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return replace(spec, num_hidden_layers=layers or spec.num_hidden_layers, head_size=hd)


def _copy_sharing_embeddings(model: nn.Module) -> nn.Module:
    """Timing only: a copy of `model` that shares its embedding and head (pruning leaves them as they were), so
    several copies of a 7B-shaped model fit in memory at once and copying is quicker. Never used for quality,
    where a fine-tune would change the shared tensors."""
    shared = (model.model.embed_tokens, model.lm_head)
    return copy.deepcopy(model, memo={id(m): m for m in shared})


def _no_room(model: nn.Module) -> str | None:
    """Why another pruned copy of `model`'s decoder layers would not fit in memory now, or None: every timed
    variant stays in memory for the rotating rounds, and a machine that swaps times nothing honestly."""
    dev = next(model.parameters()).device
    need = 1.25 * weight_bytes(model.model.layers) + 2**30  # the copy, pruning's temporaries, headroom
    if dev.type == "cuda":
        free = torch.cuda.mem_get_info(dev)[0]
    else:
        from labkit.core.hardware import memory_bytes

        free = memory_bytes()["available"]
    if need <= free:
        return None
    return (f"not enough memory for another copy of the decoder layers (about {need / 2**30:.1f} GiB needed, "
            f"{free / 2**30:.1f} GiB available now): time fewer variants or build fewer layers")


def benchmark(model: nn.Module, plan: list[Variant], *, hw: Card, calib: torch.Tensor, prompt_len: int = 128,
              new_tokens: int = 8, repeats: int = 3, seed: int = 0, full_layers: int | None = None,
              progress: bool = True) -> tuple[pd.DataFrame, dict[str, dict[str, Ratio]]]:
    """Speed of each variant on a shape-faithful model: time to first token (prefill of `prompt_len` tokens)
    and time per output token (batch-1 decode) against the dense model, measured side by side in rotating
    rounds. Next to each: the roofline floors of the pruned shape on `hw` and the speed-up they predict (dense
    floor / pruned floor: fewer bytes per token for decode, fewer FLOPs for prefill), the fraction of that
    prediction reached, and the prediction for the full-depth model (`full_layers`). Returns the table and
    the Ratio objects {label: {"decode": Ratio, "prefill": Ratio}} whose .words() the notebook prints."""
    import pandas as pd
    from tqdm.auto import tqdm

    from labkit.core.bench import generate_timed, run_rounds
    from labkit.core.floors import of_floors
    from labkit.core.models import prompt_ids
    from labkit.core.roofline import decode_floor, prefill_floor

    dtype = DTYPE_NAMES[next(model.parameters()).dtype]
    dev = next(model.parameters()).device
    ids = prompt_ids(prompt_len, vocab_size=model.config.vocab_size, seed=seed).to(dev)
    context = prompt_len + new_tokens // 2
    runners: dict[str, nn.Module] = {"dense": model}
    rows: dict[str, dict] = {"dense": {"label": "dense", "kind": "dense", "status": "ok", "achieved": "-"}}
    for v in tqdm(plan, desc="prune the speed model", disable=not progress):
        row = {"label": v.label, "kind": v.kind}
        if v.kind == "semi-structured":
            reason = semi_structured_unsupported(dev, next(model.parameters()).dtype)
            row["label"] = f"{v.label} + 2:4 kernel"
            if reason:
                rows[row["label"]] = {**row, "status": f"skipped: {reason}"}
                continue
        reason = _no_room(model)
        if reason:
            rows[row["label"]] = {**row, "status": f"skipped: {reason}"}
            continue
        try:
            p = v.apply(_copy_sharing_embeddings(model), calib, inplace=True)
            if v.kind == "semi-structured":  # pragma: no cover - needs an sm80+ GPU
                from labkit.techniques.prune import to_sparse

                p = to_sparse(p, "2:4", inplace=True)
        except PruneSkipped as e:
            rows[row["label"]] = {**row, "status": f"skipped: {e}"}
            continue
        runners[row["label"]] = p
        rows[row["label"]] = {**row, "status": "ok", "achieved": describe_achieved(p)}

    def timed(m: nn.Module) -> dict:
        rt = generate_timed(m, ids, new_tokens)[0]
        return {"ttft": rt.ttft, "tpot": rt.tpot}

    with torch.inference_mode():
        r = run_rounds({k: (lambda m=m: timed(m)) for k, m in runners.items()}, repeats, progress=progress)
    spec0 = shape_of(model)
    dense_d, dense_p = decode_floor(spec0, dtype, hw, context), prefill_floor(spec0, dtype, hw, prompt_len)
    full0 = decode_floor(shape_of(model, full_layers), dtype, hw, context) if full_layers else None
    ratios: dict[str, dict[str, Ratio]] = {}
    names = list(runners)
    fl = {n: (decode_floor(shape_of(runners[n]), dtype, hw, context), prefill_floor(shape_of(runners[n]), dtype, hw,
                                                                                   prompt_len)) for n in names}
    dec_of = of_floors([r.median(n, "tpot") for n in names], [fl[n][0] for n in names], compute=f"{dtype} matmul")
    pre_of = of_floors([r.median(n, "ttft") for n in names], [fl[n][1] for n in names], compute=f"{dtype} matmul")
    for name, dof, pof in zip(names, dec_of, pre_of, strict=True):
        m, (d, pf) = runners[name], fl[name]
        spec = shape_of(m)
        dec, pre = r.median(name, "tpot"), r.median(name, "ttft")
        ratios[name] = {"decode": r.ratio("dense", name, "tpot"), "prefill": r.ratio("dense", name, "ttft")}
        row = rows[name]
        row.update({"params_M": sum(p.numel() for p in m.parameters()) / 1e6,
                    "decode_MiB_per_token": d.bytes / MiB, "cold_s": r.cold[name]["s"],
                    "prefill_ms": 1e3 * pre, "decode_ms": 1e3 * dec,
                    "prefill_x": ratios[name]["prefill"].value, "decode_x": ratios[name]["decode"].value,
                    "predicted_prefill_x": dense_p.seconds / pf.seconds,
                    "predicted_decode_x": dense_d.seconds / d.seconds,
                    "prefill_floor_ms": 1e3 * pof.floor_s, **pof.fields("prefill_of_floor"),
                    "decode_floor_ms": 1e3 * dof.floor_s, **dof.fields("decode_of_floor")})
        row["decode_of_prediction"] = row["decode_x"] / row["predicted_decode_x"]
        if full0 is not None:
            kept = spec.num_hidden_layers / spec0.num_hidden_layers  # layer pruning keeps this share of layers
            full = decode_floor(shape_of(m, max(1, round(full_layers * kept))), dtype, hw, context)
            row["full_depth_predicted_decode_x"] = full0.seconds / full.seconds
    out = pd.DataFrame(list(rows.values()))
    out.attrs["load"] = r.load
    out.attrs["dtype"] = dtype
    return out, ratios
