"""Tensor, pipeline and data parallelism with torch.distributed's own APIs: gloo on CPU cores, NCCL on CUDA GPUs.

- `launch(fn, world_size, *args)`: one process per rank (spawned, each with its share of the cores), `fn(ctx,
  *args)` on each, every rank's result back. A rank that fails stops the others with an error naming it; no
  process is left running, whatever happens (an error, a timeout, an interrupt).
- Tensor parallelism (Megatron-LM's split, as Hugging Face's own `tp_plan` for Llama writes it): `tensor_parallel`
  applies `parallelize_module` with q/k/v and gate/up column-wise and o/down row-wise, so each layer needs one
  all-reduce after attention and one after the MLP; the embedding is split by vocabulary rows (one all-reduce)
  and the head by vocabulary columns (one all-gather). `CommTimer` measures the time in those collectives.
- Pipeline parallelism: `pipeline` cuts the layers into equal contiguous stages (`StageModule`) and runs them as
  `torch.distributed.pipelining.PipelineStage`s under `ScheduleGPipe`, which splits a batch into micro-batches.
- Data parallelism for serving is plain replicas: every rank holds the whole model and serves its share of the
  requests (`replica_share`); nothing is communicated.

The checks (`check_world_size`, `check_tp`, `check_stages`, `check_microbatches`) run before any process starts,
so a configuration that cannot work fails at once with the constraint named.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from fnmatch import fnmatch
from pathlib import Path

import torch
from torch import nn

BACKENDS = {"cpu": "gloo", "cuda": "nccl"}


class ParallelError(ValueError):
    """A parallel configuration that cannot work here; the message names the constraint and the valid choices."""


class RankFailed(RuntimeError):
    """A rank raised, died or hung; the message names it. Every process was stopped and joined before this."""


# ---------------------------------------------------------------- checks (before any process starts)

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


def check_tp(config, tp: int) -> int:
    """A TP degree must divide the attention heads and the KV heads: each rank computes whole heads."""
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


# ---------------------------------------------------------------- processes

@dataclass
class RankContext:
    """What `fn` gets on each rank: its rank, the world, its device, the 1-D device mesh, and the cores it may
    use (`threads`) out of all the machine's (`cores`: `solo()` lends them all to one rank while the others
    wait in a collective, which blocks without spinning)."""

    rank: int
    world_size: int
    device: torch.device
    mesh: object  # torch.distributed.device_mesh.DeviceMesh
    threads: int
    cores: int
    workdir: str

    @property
    def backend(self) -> str:
        return BACKENDS[self.device.type]

    @contextlib.contextmanager
    def solo(self):
        """Run the block with every core (one process alone, the baseline), then go back to this rank's share."""
        torch.set_num_threads(self.cores)
        try:
            yield
        finally:
            torch.set_num_threads(self.threads)

    def progress(self, done: int, total: int, what: str) -> None:
        """Rank 0 tells the launching process how far it is (shown as a progress bar there)."""
        if self.rank == 0:
            _write_json(Path(self.workdir) / "progress.json", {"done": done, "total": total, "what": what})


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, for the rendezvous of one launch."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _entry(rank: int, world_size: int, port: int, device: str, threads: int, workdir: str, timeout_s: float,
           fn: Callable, args: tuple) -> None:
    """One rank: join the group, build the mesh, run `fn`, write its result (or its error) for the launcher."""
    import torch.distributed as dist

    out = Path(workdir)
    (out / f"started{rank}").touch()  # the launcher tells a crash while starting from a death later
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
        torch.set_num_threads(threads)
        if device == "cuda":
            torch.cuda.set_device(rank)
        dist.init_process_group(BACKENDS[device], rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device, (world_size,))
        dev = torch.device(device, rank) if device == "cuda" else torch.device("cpu")
        ctx = RankContext(rank, world_size, dev, mesh, threads, cores(), workdir)
        result = fn(ctx, *args)
        _write_json(out / f"rank{rank}.json", result)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - every failure must reach the launcher, then the process ends
        _write_json(out / f"error{rank}.json", {"time": time.time(), "error": f"{type(e).__name__}: {e}",
                                                "traceback": traceback.format_exc()})
        os._exit(1)  # no teardown: the peers are being stopped by the launcher anyway


def _stop(procs: list) -> None:
    """Terminate every live rank, then kill what is left, then join all: nothing keeps running."""
    procs = [p for p in procs if p.pid is not None]  # started ones (a failed start leaves the rest unstarted)
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()


def _how(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _root_cause(procs: list, workdir: Path, stopped: set[int], world_size: int) -> str:
    """The failure to report: a rank that died without a Python error (a signal, os._exit, the OOM killer) is the
    cause of its peers' errors; otherwise the earliest error any rank raised."""
    died = [r for r, p in enumerate(procs) if p.exitcode not in (0, None) and r not in stopped
            and not (workdir / f"error{r}.json").exists()]
    if died:
        r = died[0]
        if not (workdir / f"started{r}").exists():
            return (f"rank {r} of {world_size} failed while starting ({_how(procs[r].exitcode)}), before labkit's "
                    "rank code ran; its traceback is printed above. A script that launches ranks must guard its "
                    "own code with `if __name__ == '__main__':` (each rank imports the script again)")
        return (f"rank {r} of {world_size} died ({_how(procs[r].exitcode)}) without a Python error: killed from "
                "outside, out of memory, or a crash in native code")
    errors = []
    for r in range(world_size):
        f = workdir / f"error{r}.json"
        if f.exists():
            errors.append((json.loads(f.read_text()), r))
    if errors:
        err, r = min(errors, key=lambda e: e[0]["time"])
        return f"rank {r} of {world_size} failed: {err['error']}\n\n{err['traceback']}"
    return f"a rank of {world_size} failed without saying why (exit codes {[p.exitcode for p in procs]})"


def launch(fn: Callable, world_size: int, *args, device: str = "cpu", threads: int | None = None,
           timeout_s: float = 1800.0, desc: str | None = None) -> list:
    """Run `fn(ctx: RankContext, *args)` on `world_size` spawned processes and return their results in rank order
    (each must be JSON-serialisable). `fn` must be importable (a module-level function).

    Each rank joins one process group (gloo on the CPU, NCCL on CUDA) at 127.0.0.1 on a port free at launch, and
    gets `threads` cores (default: an equal share). If any rank raises or dies, the others are stopped and
    RankFailed names the rank and its error; after `timeout_s` every rank is stopped. `desc`: a progress bar of
    what rank 0 reports through `ctx.progress`."""
    check_world_size(world_size, device)
    threads = threads or max(1, cores() // world_size)
    workdir = Path(tempfile.mkdtemp(prefix="labkit-ranks-"))
    mp = multiprocessing.get_context("spawn")
    port = free_port()  # every rank meets rank 0 there
    procs = [mp.Process(target=_entry, args=(r, world_size, port, device, threads, str(workdir), timeout_s, fn,
                                             args), daemon=True)
             for r in range(world_size)]
    bar = None
    if desc:
        from tqdm.auto import tqdm

        bar = tqdm(total=1, desc=desc)
    stopped: set[int] = set()
    failure: str | None = None
    try:
        for p in procs:
            p.start()
        pending = {p.sentinel: r for r, p in enumerate(procs)}
        deadline = time.monotonic() + timeout_s
        while pending and failure is None:
            ready = multiprocessing.connection.wait(list(pending), timeout=0.5)
            for s in ready:
                r = pending.pop(s)
                procs[r].join()
                if procs[r].exitcode != 0:
                    failure = "failed"
                    break
            if bar is not None:
                _update_bar(bar, workdir / "progress.json")
            if pending and time.monotonic() > deadline and failure is None:
                failure = "timeout"
        if failure is not None:
            stopped = {r for r, p in enumerate(procs) if p.is_alive()}
    finally:
        _stop(procs)  # also on KeyboardInterrupt or any error in this loop
        if bar is not None:
            bar.close()
    try:
        if failure == "timeout":
            raise RankFailed(f"the {world_size} ranks did not finish within {timeout_s:g} s (still running: ranks "
                             f"{sorted(stopped)}); all were stopped")
        if failure is not None:
            raise RankFailed(_root_cause(procs, workdir, stopped, world_size)
                             + f"\nThe other ranks were stopped; all {world_size} processes have exited.")
        return [json.loads((workdir / f"rank{r}.json").read_text()) for r in range(world_size)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def running_ranks() -> list:
    """Rank processes of this process still running (spawned children; multiprocessing's resource tracker, which
    it starts once and keeps, is not one): what a launch must leave empty, whatever happened."""
    import psutil

    alive = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(p.cmdline()):
                alive.append(p)
        except psutil.Error:
            pass
    return alive


def _update_bar(bar, path: Path) -> None:
    try:
        p = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if (bar.total, bar.n) == (p["total"], p["done"]):
        return
    bar.total = p["total"]
    bar.n = p["done"]
    bar.set_postfix_str(p["what"], refresh=False)
    bar.refresh()


# ---------------------------------------------------------------- tensor parallelism

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


# ---------------------------------------------------------------- greedy decoding (one process, TP or DP)

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


def replica_share(items: list, rank: int, world_size: int) -> list:
    """Data parallelism for serving: replica `rank` takes every `world_size`-th request of the trace."""
    return items[rank::world_size]


# ---------------------------------------------------------------- pipeline parallelism

class StageModule(nn.Module):
    """Decoder layers [lo, hi) of a Hugging Face Llama/Qwen2 as one pipeline stage, sharing the model's weights.
    The first stage embeds token ids; the last applies the final norm and the head to the last `keep` positions.

    It runs the whole window with causal attention and no KV cache: a pipeline schedule fixes its tensor shapes
    at its first step, so a generation keeps one window (prompt + answer so far, the rest padded) and reads the
    logits of the positions it needs; causal attention keeps the padding from reaching them."""

    def __init__(self, model: nn.Module, lo: int, hi: int, first: bool, last: bool, keep: int = 1):
        super().__init__()
        inner = model.model
        self.embed = inner.embed_tokens if first else None
        self.layers = nn.ModuleList(inner.layers[lo:hi])
        self.rotary = inner.rotary_emb
        self.norm = inner.norm if last else None
        self.head = model.lm_head if last else None
        self.keep = keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) if self.embed is not None else x
        pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        pe = self.rotary(h, pos)
        for layer in self.layers:
            h = layer(h, attention_mask=None, position_embeddings=pe, position_ids=pos)
        if self.head is not None:
            h = self.head(self.norm(h[:, -self.keep:]))
        return h


def stage_module(model: nn.Module, stage: int, stages: int, keep: int = 1) -> StageModule:
    n = model.config.num_hidden_layers
    check_stages(n, stages)
    per = n // stages
    return StageModule(model, stage * per, (stage + 1) * per, stage == 0, stage == stages - 1, keep)


def pipeline(model: nn.Module, ctx: RankContext, batch: int, seq_len: int, microbatches: int, keep: int = 1,
             module: StageModule | None = None):
    """This rank's `PipelineStage` (one stage per rank, in rank order) and a GPipe schedule over `microbatches`
    for batches of `batch` x `seq_len` token ids. The shapes are given up front (static metadata), so the
    schedule's first step runs no extra forward to discover them. Returns (stage, schedule, stage module)."""
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    check_microbatches(batch, microbatches)
    mod = module or stage_module(model, ctx.rank, ctx.world_size, keep)
    mb, dt, dev = batch // microbatches, model.dtype, ctx.device
    h, v = model.config.hidden_size, model.config.vocab_size
    first, last = ctx.rank == 0, ctx.rank == ctx.world_size - 1
    x = torch.empty(mb, seq_len, dtype=torch.long, device=dev) if first else torch.empty(mb, seq_len, h, dtype=dt,
                                                                                          device=dev)
    y = torch.empty(mb, keep, v, dtype=dt, device=dev) if last else torch.empty(mb, seq_len, h, dtype=dt, device=dev)
    stage = PipelineStage(mod, ctx.rank, ctx.world_size, dev, input_args=(x,), output_args=(y,),
                          group=ctx.mesh.get_group())
    return stage, ScheduleGPipe(stage, n_microbatches=microbatches), mod


@torch.no_grad()
def pipeline_greedy(model: nn.Module, ctx: RankContext, ids: torch.Tensor, new_tokens: int,
                    microbatches: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Greedy tokens through the pipeline (every rank passes the same `ids`): one window of prompt + answer so far
    per step, the last stage's argmax broadcast to all. Returns (tokens [batch, new_tokens] on every rank, the
    first step's last-position logits on the last rank, else None)."""
    import torch.distributed as dist

    b, p = ids.shape
    t = p + new_tokens - 1
    window = torch.zeros(b, t, dtype=torch.long, device=ctx.device)
    window[:, :p] = ids
    _, sched, _ = pipeline(model, ctx, b, t, microbatches, keep=new_tokens)
    last = ctx.world_size - 1
    toks, first = [], None
    for i in range(new_tokens):
        out = sched.step(window) if ctx.rank == 0 else sched.step()
        tok = torch.empty(b, dtype=torch.long, device=ctx.device)
        if ctx.rank == last:
            tok = out[:, i].argmax(-1)
            if i == 0:
                first = out[:, 0].float().cpu()
        dist.broadcast(tok, last, group=ctx.mesh.get_group())
        toks.append(tok.cpu())
        if p + i < t:
            window[:, p + i] = tok
    return torch.stack(toks, 1), first
