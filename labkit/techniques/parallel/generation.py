"""Greedy decoding with a KV cache, timed per step: one loop for one process, a TP rank and a DP replica.

`greedy` returns the tokens, the first step's logits (to compare a split with one process) and the seconds of the
prefill and of every decode step, split into compute and collectives when a `CommTimer` is given.
`replica_share` is data parallelism for serving: each replica takes its share of the requests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from labkit.techniques.parallel.tp import CommTimer


@dataclass
class Generation:
    """Greedy tokens with the first step's logits and per-step seconds; `*_comm_s` from a CommTimer when given."""

    tokens: torch.Tensor  # [batch, new_tokens]
    first_logits: torch.Tensor  # [batch, vocab], the prefill's last position
    prefill_s: float
    decode_s: list[float]
    prefill_comm_s: float = 0.0
    decode_comm_s: list[float] | None = None
    comm_per_step: tuple[int, int] | None = None  # (collectives, bytes) of one decode step
    comm_prefill: tuple[int, int] | None = None
    kv_bytes: int = 0  # this rank's KV cache after the prefill


def cache_bytes(cache) -> int:
    """Bytes of a Hugging Face DynamicCache's keys and values (this rank's share under TP)."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
               if t is not None)


@torch.no_grad()
def greedy(model: nn.Module, ids: torch.Tensor, new_tokens: int, comm: CommTimer | None = None) -> Generation:
    """`new_tokens` greedy tokens (EOS ignored, as the course's benchmarks do) with a KV cache, timing the prefill
    and every decode step. The same loop serves one process, a TP rank and a DP replica."""
    from transformers import DynamicCache

    from labkit.core.bench import sync

    dev = ids.device
    cache = DynamicCache(config=model.config)
    if comm:
        comm.reset()
    sync(dev)
    t0 = time.perf_counter()
    logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    tok = logits.argmax(-1, keepdim=True)
    sync(dev)
    prefill_s = time.perf_counter() - t0
    first = logits.float().cpu()
    kv = cache_bytes(cache)
    c_pre = comm.reset() if comm else (0.0, 0, 0)
    out, steps, comm_steps, per_step = [tok], [], [], None
    for _ in range(new_tokens - 1):
        t0 = time.perf_counter()
        logits = model(input_ids=tok, past_key_values=cache, use_cache=True).logits[:, -1]
        tok = logits.argmax(-1, keepdim=True)
        sync(dev)
        steps.append(time.perf_counter() - t0)
        out.append(tok)
        if comm:
            s, n, b = comm.reset()
            comm_steps.append(s)
            per_step = (n, b)
    return Generation(torch.cat(out, 1).cpu(), first, prefill_s, steps, c_pre[0], comm_steps if comm else None,
                      per_step, (c_pre[1], c_pre[2]) if comm else None, kv)


def replica_share(items: list, rank: int, world_size: int) -> list:
    """Data parallelism for serving: replica `rank` takes every `world_size`-th request of the trace."""
    return items[rank::world_size]
