"""The checks that run before any rank process starts, and the errors of this package.

A parallel configuration that cannot work (more ranks than cores or GPUs, a TP degree that splits a head, stages
or micro-batches that do not divide evenly) fails here at once with the constraint and the valid choices named,
rather than as a hang or a shape error inside a rank minutes later.
"""

from __future__ import annotations

import os

import torch

BACKENDS = {"cpu": "gloo", "cuda": "nccl"}


class ParallelError(ValueError):
    """A parallel configuration that cannot work here; the message names the constraint and the valid choices."""


class RankFailed(RuntimeError):
    """A rank raised, died or hung; the message names it. Every process was stopped and joined before this."""


def cores() -> int:
    """CPU cores this process may use (its affinity, which a container or taskset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def max_world_size(device: str) -> int:
    """Ranks this machine can give one device each: a core per rank on the CPU, a GPU per rank with CUDA."""
    if device == "cpu":
        return cores()
    if device == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    raise ParallelError(f"unknown device {device!r}; choose one of {list(BACKENDS)}")


def check_world_size(world_size: int, device: str = "cpu") -> int:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ParallelError(f"world size must be a positive int, got {world_size!r}")
    most = max_world_size(device)
    if world_size > most:
        what = f"{most} CPU cores" if device == "cpu" else f"{most} CUDA GPUs"
        raise ParallelError(f"world size {world_size} is more than the {what} here: each rank needs a "
                            f"{'core' if device == 'cpu' else 'GPU'} of its own (choose 1..{most})")
    return world_size


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# the families whose decoder layers tp.tp_plan names (q/k/v/o and gate/up/down projections, one MLP per layer)
TP_FAMILIES = ("llama", "qwen2", "mistral")


def check_tp(config, tp: int) -> int:
    """A TP degree must divide the attention heads and the KV heads: each rank computes whole heads. The model
    (a transformers config or a ShapeSpec) must be of a family `tp_plan` splits (TP_FAMILIES)."""
    kind = getattr(config, "model_type", "llama")
    if tp > 1 and kind not in TP_FAMILIES:
        why = ("its experts are stacked weights, which the plan does not split" if getattr(config, "num_experts", 0)
               or getattr(config, "num_local_experts", 0) else "the plan is tested on those families only")
        raise ParallelError(f"tensor parallelism splits {', '.join(TP_FAMILIES)} decoders (q/k/v/o and gate/up/down "
                            f"projections); a {kind} model is not split here: {why}. Pipeline parallelism (whole "
                            "layers per rank) takes any family")
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    if tp < 1 or heads % tp or kv % tp:
        valid = [d for d in _divisors(kv) if heads % d == 0]
        raise ParallelError(f"TP degree {tp} must divide the {heads} attention heads and the {kv} KV heads "
                            f"(each rank computes whole heads): choose one of {valid}")
    return tp


def check_stages(num_layers: int, stages: int) -> int:
    """Pipeline stages take equal contiguous runs of layers, so their number must divide the layer count."""
    if stages < 1 or num_layers % stages:
        raise ParallelError(f"{num_layers} layers do not split into {stages} pipeline stages of equal size: "
                            f"choose a stage count that divides {num_layers}: {_divisors(num_layers)}")
    return stages


def check_microbatches(batch: int, microbatches: int) -> int:
    if microbatches < 1 or batch % microbatches:
        raise ParallelError(f"a batch of {batch} does not split into {microbatches} equal micro-batches: "
                            f"choose one of {_divisors(batch)}")
    return microbatches
