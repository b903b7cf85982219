"""The case study's stages and how each is built: a `Stage` is one configuration of pieces earlier lessons made
(an INT8 method, a server, an attention, a number type), `plan` stacks them in the guide's order, `stage_model`
and `quality_model` make each stage's speed and quality model, `Server` serves a stage (one request at a time
through `generate`, or labkit.serve's engine), and `final_stage` says which stage the check compares.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from labkit.core import models
from labkit.core.bench import generate_timed
from labkit.lessons import batching as experiment
from labkit.serve.baselines import run_engine, run_sequential
from labkit.serve.sequence import SamplingParams
from labkit.serve.workload import Request
from labkit.techniques import quant

GUIDE = {"ttft_ms": (287.0, 72.0), "throughput": (12.4, 51.3),
         "factors": {"+ INT8": 2.3, "+ continuous batching": 1.8, "+ fast attention": 1.4}}
KEEP_ABOVE = 1.05  # an extra stage is kept only if it beats the stage before by more than run-to-run noise


@dataclass(frozen=True)
class Stage:
    name: str
    int8: str | None = None  # a labkit.techniques.quant method, or None (the stack: INT8; best-here: any that runs)
    server: str = "sequential"  # "sequential" (generate, one request at a time) or "engine" (labkit.serve)
    attention: str = "eager"  # "eager" or "sdpa"
    dtype: str = "fp32"  # of everything INT8 does not quantize

    @property
    def guide_factor(self) -> float | None:
        return GUIDE["factors"].get(self.name)


EXTRAS = ("bf16",)  # optional stages after fast attention


def plan(int8: str, extras: Sequence[str] = ("bf16",), device: str = "cpu") -> tuple[list[Stage], list[dict]]:
    """The stages in order, and the extras that cannot apply here with the reason (labkit.techniques.quant's own)."""
    if int8 not in quant.INT8_METHODS:
        raise ValueError(f"the '+ INT8' stage takes an INT8 method, one of {list(quant.INT8_METHODS)}; got {int8!r}")
    base = Stage("baseline")
    q = Stage("+ INT8", int8=int8)
    cb = Stage("+ continuous batching", int8=int8, server="engine")
    fa = Stage("+ fast attention", int8=int8, server="engine", attention="sdpa")
    stages, skipped = [base, q, cb, fa], []
    for extra in extras:
        if extra not in EXTRAS:
            raise ValueError(f"unknown extra stage {extra!r}; the case study knows {list(EXTRAS)}")
        reason = quant.unsupported(int8, str(device).split(":")[0], torch.bfloat16)
        if reason:
            skipped.append({"stage": "+ bf16", "status": f"skipped: {reason}"})
        else:
            stages.append(Stage("+ bf16", int8=int8, server="engine", attention="sdpa", dtype="bf16"))
    return stages, skipped


def stage_model(stage: Stage, base, cache: dict):
    """The speed model of `stage`, made from the fp32 `base` (quantized and/or cast copies, shared between
    stages that need the same one through `cache`)."""
    key = (stage.int8, stage.dtype)
    if key not in cache:
        m = base if stage.dtype == "fp32" else copy.deepcopy(base).to(models.as_dtype(stage.dtype))
        cache[key] = quant.quantize(m, stage.int8) if stage.int8 else m
    return cache[key]


def quality_model(stage: Stage, cache: dict):
    """The embedded (trained) model with the same transformations, for perplexity. The engine's attention is
    the same function as Hugging Face's of that name (the engine tests check the tokens are equal)."""
    key = (stage.int8, stage.dtype, stage.attention)
    if key not in cache:
        m = models.load(models.EMBEDDED, dtype=stage.dtype, attn_implementation=stage.attention)
        cache[key] = quant.quantize(m, stage.int8, inplace=True) if stage.int8 else m
    return cache[key]


class Server:
    """One stage's server: `idle_ttft(prompt)` for a single request on an idle server, `replay(trace)`."""

    def __init__(self, stage: Stage, model, trace: Sequence[Request], max_batch: int):
        self.stage, self.model = stage, model
        self.engine = (experiment.engine_for(model, trace, max_batch, attention=stage.attention)
                       if stage.server == "engine" else None)

    def idle_ttft(self, prompt: list[int]) -> float:
        if self.engine is None:
            rt, _ = generate_timed(self.model, torch.tensor([prompt], device=self.model.device), 1)
            return rt.ttft
        sid = self.engine.add_request(prompt, SamplingParams(max_tokens=1, ignore_eos=True))
        while self.engine.has_unfinished():
            self.engine.step()
        seq = self.engine.get(sid)
        return seq.token_times[0] - seq.arrival_time

    def replay(self, trace: Sequence[Request]):
        if self.engine is None:
            return run_sequential(self.model, trace)
        self.engine.stats.clear()
        return run_engine(self.engine, trace)


def compute_dtype(stage) -> str:
    """The number type a stage's matmuls run in (a Stage or a row): int8 where its INT8 method quantizes the
    activations too, else the stage's own dtype. What its prefill floor is taken at."""
    int8, dtype = ((stage.get("int8"), stage.get("dtype", "fp32")) if isinstance(stage, dict)
                   else (stage.int8, stage.dtype))
    return quant.COMPUTE_DTYPE.get(int8, dtype) if int8 else dtype


def final_stage(rows: list[dict]) -> dict:
    """The last stage of the guide's stack that is kept: an extra (bf16) counts only if it beat the stage before on
    throughput by more than KEEP_ABOVE; a best-here candidate's row (`best_here`, measured beside the stack) never
    counts."""
    final = rows[0]
    for r in rows[1:]:
        if r.get("best_here"):
            continue
        if r["stage"] in GUIDE["factors"] or r.get("throughput_x_prev", 0) > KEEP_ABOVE:
            final = r
    return final
