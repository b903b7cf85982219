"""Tensor parallelism: Megatron-LM's split of a Llama/Qwen2 decoder with `parallelize_module`, its collectives timed.

`tensor_parallel` splits q/k/v and gate/up column-wise and o/down row-wise (one all-reduce after attention and one
after the MLP per layer), the embedding by vocabulary rows and the head by vocabulary columns. `CommTimer` measures
the seconds spent in those collectives so a step splits into compute and communication; `collective_breakdown`
tells waiting for the slower rank from moving the data.
"""

from __future__ import annotations

import time
from fnmatch import fnmatch

from torch import nn

from labkit.techniques.parallel.checks import ParallelError, check_tp


def tp_plan(shard_vocab: bool = True) -> dict:
    """Megatron-LM's split of a Llama/Qwen2 decoder for `parallelize_module` (module path -> style): q/k/v and
    gate/up column-wise (each rank computes its own heads and its slice of the MLP), o/down row-wise (partial
    sums, one all-reduce each). With `shard_vocab` the embedding is split by vocabulary rows (an all-reduce) and
    the head by vocabulary columns with the logits gathered whole on every rank (an all-gather)."""
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan = {f"model.layers.*.self_attn.{p}": ColwiseParallel() for p in ("q_proj", "k_proj", "v_proj")}
    plan["model.layers.*.self_attn.o_proj"] = RowwiseParallel()
    plan.update({f"model.layers.*.mlp.{p}": ColwiseParallel() for p in ("gate_proj", "up_proj")})
    plan["model.layers.*.mlp.down_proj"] = RowwiseParallel()
    if shard_vocab:
        plan["model.embed_tokens"] = RowwiseParallel(input_layouts=Replicate())
        plan["lm_head"] = ColwiseParallel(output_layouts=Replicate())
    return plan


def tensor_parallel(model: nn.Module, mesh, shard_vocab: bool = True) -> nn.Module:
    """Split `model` (a Hugging Face Llama or Qwen2, in place) over the 1-D `mesh` with `tp_plan`. The weights are
    taken from rank 0 and scattered (parallelize_module's default), so every rank computes with rank 0's model.
    The result gives the single process's logits to fp32 rounding and its greedy tokens."""
    from torch.distributed.tensor.parallel import parallelize_module

    check_tp(model.config, mesh.size())
    if shard_vocab and getattr(model.config, "tie_word_embeddings", False):
        raise ParallelError("this model ties its embedding to its head: a row split of one and a column split of "
                            "the other cannot share a weight; pass shard_vocab=False (both stay whole)")
    parallelize_module(model, mesh, tp_plan(shard_vocab))
    model.labkit_tp = {"degree": mesh.size(), "shard_vocab": shard_vocab}
    return model


def comm_modules(model: nn.Module, shard_vocab: bool = True) -> list[nn.Module]:
    """The modules of a `tensor_parallel` model whose output goes through a collective: every row-wise module
    (all-reduce) and the head when the vocabulary is split (all-gather)."""
    from torch.distributed.tensor.parallel import RowwiseParallel

    pats = [k for k, style in tp_plan(shard_vocab).items()
            if isinstance(style, RowwiseParallel) or k == "lm_head"]
    return [m for name, m in model.named_modules() if any(fnmatch(name, p) for p in pats)]


class CommTimer:
    """Seconds a `tensor_parallel` model spends in its collectives, so a step splits into compute and communication.

    Hooks around the output of each module in `comm_modules`: one stamp when the local matmul is done (before
    parallelize_module's own hook starts the collective), one when the collective's result is there (waiting
    for it here rather than at its first use, which on a CPU changes nothing: the next operation needs it).
    The time includes waiting for the slower rank, which is part of what a collective costs. With `events` set
    to a list, each collective's (start, end) perf_counter stamps are appended: on one machine the clock is shared
    by all processes, so the ranks' stamps tell waiting for the other rank from moving the data."""

    def __init__(self, model: nn.Module, shard_vocab: bool = True, device=None):
        from labkit.core.bench import sync

        self._sync = lambda: sync(device)
        self.seconds, self.count, self.bytes = 0.0, 0, 0
        self.events: list[tuple[float, float]] | None = None
        self._t0 = 0.0
        self._handles = []
        for m in comm_modules(model, shard_vocab):
            self._handles.append(m.register_forward_hook(self._before, prepend=True))
            self._handles.append(m.register_forward_hook(self._after))

    def _before(self, mod, args, out) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def _after(self, mod, args, out):
        from torch.distributed._functional_collectives import AsyncCollectiveTensor

        if isinstance(out, AsyncCollectiveTensor):
            out = out.wait()
        self._sync()
        t1 = time.perf_counter()
        self.seconds += t1 - self._t0
        if self.events is not None:
            self.events.append((self._t0, t1))
        self.count += 1
        self.bytes += out.numel() * out.element_size()
        return out

    def reset(self) -> tuple[float, int, int]:
        """(seconds, collectives, bytes) since the last reset; starts again from zero."""
        got = (self.seconds, self.count, self.bytes)
        self.seconds, self.count, self.bytes = 0.0, 0, 0
        return got

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def collective_breakdown(events_per_rank: list[list[tuple[float, float]]]) -> dict:
    """Split every rank's collectives (CommTimer.events of each rank, in the same order) into waiting for the last
    rank to arrive and the time after it did (moving the data and the bookkeeping): medians over all ranks'
    collectives and the worst one, in seconds."""
    import statistics

    waits, after, total = [], [], []
    for stamps in zip(*events_per_rank, strict=True):
        last = max(start for start, _ in stamps)
        for start, end in stamps:
            waits.append(last - start)
            after.append(end - last)
            total.append(end - start)
    if not total:
        return {"collectives": 0}
    return {"collectives": len(total) // len(events_per_rank), "ranks": len(events_per_rank),
            "median_wait_s": statistics.median(waits), "median_after_arrival_s": statistics.median(after),
            "median_s": statistics.median(total), "mean_s": statistics.mean(total), "max_s": max(total)}
