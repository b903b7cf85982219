"""Notebook 06's parameters resolved and checked in one call, so a bad one fails at once with a clear message.

`resolve_parameters` takes what the notebook's `parameters` cell holds (None: the preset's value) and returns
every value the later cells use, in `Settings` (a named tuple: unpack it, or read it by name).
"""

from __future__ import annotations

from typing import NamedTuple

from labkit.core import hardware
from labkit.core.models import SHAPES
from labkit.core.params import check, check_preset, default, resolve_device
from labkit.lessons.kernels.compiling import COMPILE_VARIANTS
from labkit.lessons.kernels.precision import PRECISIONS
from labkit.techniques import kernels

ATTN_DTYPES = ("fp32", "bf16", "fp16")
KV_SHAPES = ("llama-2-13b", "llama-3-8b", "qwen2.5-0.5b")  # MHA, GQA 4:1, GQA 7:1


class Settings(NamedTuple):
    device: str
    seed: int
    layers: int
    lengths: list[int]
    prefill_lengths: list[int]
    kv_tokens: list[int]
    backends: list[str]
    attn_dtype: str
    rounds: int
    compile_variants: list[str]
    prompt_len: int
    new_tokens: int
    precisions: list[str]
    kv_shapes: list[str]
    ppl_tokens: int


def resolve_parameters(preset: str, *, device="auto", seed=0, layers=None, lengths=None, prefill_lengths=None,
                       kv_tokens=None, backends=None, attn_dtype=None, rounds=None, compile_variants=None,
                       prompt_len=None, new_tokens=None, precisions=None, kv_shapes=None,
                       ppl_tokens=None) -> Settings:
    """Each parameter checked (type, range, choices) or, left None, taken from `preset` ("ci" or "full").
    `attn_dtype` None: fp16 on CUDA, bf16 where the CPU has bf16 matrix units, else fp32; `kv_shapes` None:
    `KV_SHAPES`."""
    check_preset(preset)
    device, seed = resolve_device(device), check("seed", seed, int)
    long = [256, 512, 1024, 2048, 4096, 8192]
    lengths = default("lengths", lengths, preset, ci=[256, 1024], full=long, kind=list)
    prefill_lengths = default("prefill_lengths", prefill_lengths, preset, ci=[256, 1024], full=long, kind=list)
    kv_tokens = default("kv_tokens", kv_tokens, preset, ci=[256, 1024], full=[256, 1024, 4096], kind=list)
    for k, xs in (("lengths", lengths), ("prefill_lengths", prefill_lengths), ("kv_tokens", kv_tokens)):
        for x in xs:
            check(k, x, int, min=16)
    if attn_dtype is None:
        attn_dtype = "fp16" if device != "cpu" else ("bf16" if hardware.matrix_units()["bf16"] else "fp32")
    ci_variants = ["eager", "compile", "compile+freezing"]
    return Settings(
        device=device, seed=seed,
        layers=default("layers", layers, preset, ci=1, full=2, min=1),
        lengths=lengths, prefill_lengths=prefill_lengths, kv_tokens=kv_tokens,
        backends=check("backends", backends or list(kernels.BACKENDS), list, choices=kernels.BACKENDS),
        attn_dtype=check("attn_dtype", attn_dtype, str, choices=list(ATTN_DTYPES)),
        rounds=default("rounds", rounds, preset, ci=2, full=5, min=1),
        compile_variants=check("compile_variants", compile_variants or (
            ci_variants if preset == "ci" else list(COMPILE_VARIANTS)), list, choices=list(COMPILE_VARIANTS)),
        prompt_len=default("prompt_len", prompt_len, preset, ci=128, full=512, min=2),
        new_tokens=default("new_tokens", new_tokens, preset, ci=6, full=32, min=2),
        precisions=check("precisions", precisions or (list(PRECISIONS)[:4] if preset == "ci" else list(PRECISIONS)),
                         list, choices=PRECISIONS),
        kv_shapes=check("kv_shapes", list(KV_SHAPES) if kv_shapes is None else kv_shapes, list,
                        choices=sorted(SHAPES)),
        ppl_tokens=default("ppl_tokens", ppl_tokens, preset, ci=2048, full=8192, min=64),
    )
