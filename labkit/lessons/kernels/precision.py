"""Precision at inference: fp32, bf16 and fp16 casts and autocast, for speed, memory and perplexity.

`precision_model` / `precision_context` give a mode's model and context (autocast needs no GradScaler: that
scales gradients, for training); `precision_speed` and `precision_quality` measure each mode side by side;
`empty_cache_rows` measures what torch.cuda.empty_cache() does around a prefill (CUDA only, else a skipped row).
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch

from labkit.core.bench import run_rounds
from labkit.core.models import ShapeSpec
from labkit.core.roofline import Card
from labkit.core.units import MiB
from labkit.techniques import memory

if TYPE_CHECKING:
    import pandas as pd


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
    and the process's peak RSS growth, then TTFT and time per output token side by side (`generate`). Only fp32's
    (else the first mode's) cold request is timed (`cold_s`, for notebook 06's cold-start claim): the memory
    prefill warms the others, which on a CPU without 16-bit matrix units saves their slowest calls."""
    import pandas as pd

    from labkit.core.bench import generate_timed
    from labkit.core.floors import of_floors
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
    with torch.inference_mode():  # the first mode's cold request only: the prefill above warmed the others
        first, t0 = ("fp32" if "fp32" in run else modes[0]), time.perf_counter()
        run[first]()
        cold = {first: time.perf_counter() - t0}
        r = run_rounds(run, rounds, cold=False, device=dev, progress=progress, desc="precision")
    for mode, row in rows.items():
        row.update({"prefill_ms": r.median(mode, "ttft") * 1e3, "decode_ms": r.median(mode, "tpot") * 1e3,
                    "cold_s": cold.get(mode), "steady_s": r.median(mode)})
        row["cold_over_warm"] = row["cold_s"] / row["steady_s"] if mode in cold else None
        if "fp32" in run and mode != "fp32":
            for ph, key in (("prefill", "ttft"), ("decode", "tpot")):
                ratio = r.ratio("fp32", mode, key)
                row[f"x_{ph}_vs_fp32"], row[f"{ph}_vs_fp32"] = ratio.value, ratio.words()
        if card is not None:
            dt = "fp32" if mode == "fp32" or mode.startswith("autocast") else mode
            cdt = mode[9:] if mode.startswith("autocast") else dt  # autocast computes in 16 bits, reads fp32
            pf = prefill_floor(spec, cdt, card, prompt_len, layers=layers)
            row["_floor"] = decode_floor(spec, dt, card, prompt_len + new_tokens // 2, layers=layers)
            row["prefill_floor_ms"], row["_compute"] = pf.seconds * 1e3, f"{cdt} matmul"
    timed = [row for row in rows.values() if "_floor" in row]  # a beaten floor: re-derived from this run's best
    for row, f in zip(timed, of_floors([row["decode_ms"] / 1e3 for row in timed], [row["_floor"] for row in timed],
                                       compute=[row["_compute"] for row in timed]), strict=True):
        row.update({"decode_floor_ms": f.floor_s * 1e3, **f.fields("decode_fraction_of_floor")})
        del row["_floor"], row["_compute"]
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
