"""What the launched rank processes run for notebook 04: `lesson_worker` works through every part on each rank.

Equality of TP and PP with one process, TP timing split into compute and collectives, the PP bubble, DP replicas,
the all-reduce sweep and C14's granularity sweep. Timed candidates run side by side in rotating rounds on rank 0,
which broadcasts which candidate comes next (`rounds_together`). These functions are pickled by their module path
when the ranks are spawned, so they live here, at module level of an importable module.
"""

from __future__ import annotations

import contextlib
import copy
import io
import statistics
import time

import torch

from labkit.core.bench import run_rounds, time_callable
from labkit.core.models import build, prompt_ids, weight_bytes
from labkit.core.units import MiB
from labkit.lessons.parallelism.config import ONE_SHARE, Config, one_device_name, solo_name, sweep_config
from labkit.techniques import parallel

STOP = -1


def _command(ctx, value: int | None) -> int:
    """Rank 0 broadcasts which candidate runs next (or STOP); the others block here until it does."""
    import torch.distributed as dist

    t = torch.tensor([STOP if value is None else value], dtype=torch.long, device=ctx.device)
    dist.broadcast(t, 0, group=ctx.mesh.get_group())
    return int(t.item())


def rounds_together(ctx, candidates: dict[str, tuple[bool, callable]], rounds: int) -> dict | None:
    """`bench.run_rounds` across ranks. Each candidate is (together, fn): together ones run on every rank (rank 0
    says which); the others run on rank 0 alone with every core while the rest wait. Returns Rounds.to_dict() on
    rank 0, None elsewhere. The models are warm (the equality checks ran them), so no cold call is taken."""
    names = list(candidates)
    if ctx.rank != 0:
        while (i := _command(ctx, 0)) != STOP:
            candidates[names[i]][1]()
        return None

    def wrap(i: int, together: bool, fn):
        def call():
            if together:
                _command(ctx, i)
                return fn()
            with ctx.solo():
                return fn()
        return call

    calls = {n: wrap(i, *candidates[n]) for i, n in enumerate(names)}
    # run_rounds' load watch counts the other ranks as "other processes" (they are not children of rank 0) and
    # would print a misleading note: the launcher watches the load of all ranks instead.
    with contextlib.redirect_stdout(io.StringIO()):
        r = run_rounds(calls, rounds, cold=False, device=ctx.device, progress=False)
    _command(ctx, STOP)
    return r.to_dict()


def _gather(ctx, value: float) -> list[float]:
    import torch.distributed as dist

    t = torch.zeros(ctx.world_size, dtype=torch.float64, device=ctx.device)
    t[ctx.rank] = value
    dist.all_reduce(t, group=ctx.mesh.get_group())
    return t.tolist()


def _timed_gen(g: parallel.Generation) -> dict:
    out = {"prefill": g.prefill_s, "decode": statistics.mean(g.decode_s) if g.decode_s else float("nan")}
    if g.decode_comm_s is not None:
        out["prefill_comm"] = g.prefill_comm_s
        out["decode_comm"] = statistics.mean(g.decode_comm_s) if g.decode_comm_s else 0.0
    return out


def _equality(ctx, cfg: Config, full, tp, comm, ids, pp_ids) -> dict:
    import torch.distributed as dist

    ref = pp_ref = None
    if ctx.rank == 0:
        with ctx.solo():
            ref = parallel.greedy(full, ids, cfg.new_tokens)
    g = parallel.greedy(tp, ids, cfg.new_tokens, comm)
    comm.events = []  # a second, warm generation stamps its collectives (the first pays one-time set-up costs)
    parallel.greedy(tp, ids, cfg.new_tokens, comm)
    events = [None] * ctx.world_size
    dist.all_gather_object(events, comm.events, group=ctx.mesh.get_group())
    comm.events = None
    if ctx.rank == ctx.world_size - 1:
        pp_ref = parallel.greedy(full, pp_ids, cfg.new_tokens)  # the reference for the last stage's logits
    pp_tokens, pp_first = parallel.pipeline_greedy(full, ctx, pp_ids, cfg.new_tokens, microbatches=ctx.world_size)
    pp_diff = _gather(ctx, (pp_first - pp_ref.first_logits).abs().max().item() if pp_first is not None else 0.0)
    pp_same = _gather(ctx, float(torch.equal(pp_tokens, pp_ref.tokens)) if pp_ref is not None else 0.0)
    if ctx.rank != 0:
        return {"tp_kv_bytes": g.kv_bytes}
    return {"tp_tokens_equal": torch.equal(g.tokens, ref.tokens), "tp_max_logit_diff": (g.first_logits
            - ref.first_logits).abs().max().item(), "pp_tokens_equal": bool(pp_same[-1]),
            "pp_max_logit_diff": max(pp_diff), "tokens": ref.tokens[0].tolist(), "tp_tokens": g.tokens[0].tolist(),
            "pp_batch_checked": list(pp_ids.shape), "pp_microbatches": ctx.world_size,
            "kv_bytes": ref.kv_bytes, "tp_kv_bytes": g.kv_bytes, "comm_per_decode_step": list(g.comm_per_step or ()),
            "comm_per_prefill": list(g.comm_prefill or ()),
            "collective_breakdown": parallel.collective_breakdown(events)}


def _references(ctx, fn) -> dict:
    """One-process candidates timing `fn` (-> Generation): on a CPU all cores, and one rank's share of them (one
    'device' of the split); with CUDA one GPU, which is both."""
    out = {solo_name(ctx.device.type): (False, lambda: _timed_gen(fn()))}
    if ctx.device.type != "cuda":
        out[ONE_SHARE] = (False, lambda: _one_rank(ctx, fn))
    return out


def _tp_timing(ctx, cfg: Config, full, tp, comm, ids) -> dict | None:
    n = cfg.new_tokens
    return rounds_together(ctx, {**_references(ctx, lambda: parallel.greedy(full, ids, n)),
                                 f"TP={ctx.world_size}": (True, lambda: _timed_gen(parallel.greedy(tp, ids, n, comm)))},
                           cfg.rounds)


def _one_rank(ctx, fn):
    """Rank 0 alone with one rank's share of the cores (it is inside ctx.solo(), which lent it all of them)."""
    torch.set_num_threads(ctx.threads)
    try:
        return _timed_gen(fn())
    finally:
        torch.set_num_threads(ctx.cores)


class _Busy:
    """Seconds a pipeline stage spends computing (forward hooks around its module)."""

    def __init__(self, module, device):
        from labkit.core.bench import sync

        self.seconds, self._t0, self._sync = 0.0, 0.0, lambda: sync(device)
        self.handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, *_):
        self._sync()
        self._t0 = time.perf_counter()

    def _post(self, *_):
        self._sync()
        self.seconds += time.perf_counter() - self._t0

    def remove(self):
        for h in self.handles:
            h.remove()


def _pp_step(ctx, sched, busy: _Busy, x, ref_logits) -> dict:
    import torch.distributed as dist

    group = ctx.mesh.get_group()
    busy.seconds = 0.0
    dist.barrier(group=group)
    t0 = time.perf_counter()
    out = sched.step(x) if ctx.rank == 0 else sched.step()
    dist.barrier(group=group)
    wall = time.perf_counter() - t0
    busy_all = _gather(ctx, busy.seconds)
    diff = (out[:, -1] - ref_logits).abs().max().item() if out is not None else 0.0
    diff = max(_gather(ctx, diff))
    return {"bubble": 1 - statistics.mean(busy_all) / wall, "busy_max": max(busy_all), "max_logit_diff": diff}


def _pp(ctx, cfg: Config, full) -> dict | None:
    x = prompt_ids(cfg.pp_len, batch=cfg.pp_batch, vocab_size=full.config.vocab_size, seed=cfg.seed + 1).to(ctx.device)
    last = ctx.rank == ctx.world_size - 1
    with torch.no_grad():
        ref = full(input_ids=x, logits_to_keep=1).logits[:, -1] if last else None
    module = parallel.stage_module(full, ctx.rank, ctx.world_size, keep=1)
    busy = _Busy(module, ctx.device)
    cands: dict = {solo_name(ctx.device.type): (False, lambda: _forward(full, x))}
    for m in cfg.micro_batches:
        _, sched, _ = parallel.pipeline(full, ctx, cfg.pp_batch, cfg.pp_len, m, keep=1, module=module)
        cands[f"PP={ctx.world_size}, {m} micro-batches"] = (True, lambda s=sched: _pp_step(ctx, s, busy, x, ref))
    with torch.no_grad():
        for together, fn in cands.values():  # warm each schedule once (its first step sets up the p2p)
            if together:
                fn()
        out = rounds_together(ctx, cands, cfg.rounds)
    busy.remove()
    return out


@torch.no_grad()
def _forward(model, x) -> dict:
    model(input_ids=x, logits_to_keep=1)
    return {}


def _serve(ctx, model, requests) -> tuple[int, dict]:
    """Serve requests one after another (greedy, each to its output length); (output tokens, {id: tokens})."""
    done = {}
    for r in requests:
        ids = torch.tensor([r.prompt_ids], dtype=torch.long, device=ctx.device)
        done[r.request_id] = parallel.greedy(model, ids, r.output_len).tokens[0].tolist()
    return sum(len(t) for t in done.values()), done


def _dp(ctx, cfg: Config, full) -> dict | None:
    import torch.distributed as dist

    from labkit.serve.workload import make_trace

    trace = make_trace(cfg.n_requests, prompt_len=cfg.prompt_len, output_len=tuple(cfg.output_len),
                       vocab_size=full.config.vocab_size, seed=cfg.seed)
    answers: dict = {}

    def one_process():
        t0 = time.perf_counter()
        n, answers["single"] = _serve(ctx, full, trace)
        return {"throughput": n / (time.perf_counter() - t0)}

    def replicas():
        dist.barrier(group=ctx.mesh.get_group())
        t0 = time.perf_counter()
        n, mine = _serve(ctx, full, parallel.replica_share(trace, ctx.rank, ctx.world_size))
        wall = max(_gather(ctx, time.perf_counter() - t0))
        total = sum(_gather(ctx, n))
        got = [None] * ctx.world_size
        dist.all_gather_object(got, mine, group=ctx.mesh.get_group())
        answers["dp"] = {k: v for part in got for k, v in part.items()}
        return {"throughput": total / wall}

    r = rounds_together(ctx, {solo_name(ctx.device.type): (False, one_process),
                              f"DP={ctx.world_size} replicas": (True, replicas)}, cfg.rounds)
    if ctx.rank != 0:
        return None
    return {"rounds": r, "dp_tokens_equal": answers["dp"] == answers["single"],
            "output_tokens": sum(len(t) for t in answers["single"].values()), "requests": len(trace),
            "prompt_len": cfg.prompt_len, "output_len": list(cfg.output_len)}


def _allreduce_sweep(ctx, cfg: Config, passes: int = 4) -> list[dict]:
    """Median time of one all-reduce per message size, the slowest rank's (a collective ends when it does). The
    sizes are visited in `passes` passes, each starting one size further along, so a burst of other work on this
    machine lands on several sizes a little rather than on one size a lot (as rotating rounds do)."""
    import torch.distributed as dist

    group = ctx.mesh.get_group()
    sizes = list(cfg.message_bytes)
    bufs = {b: torch.zeros(max(1, b // 4), dtype=torch.float32, device=ctx.device) for b in sizes}
    times: dict[int, list[float]] = {b: [] for b in sizes}
    for p in range(passes):
        k = p % len(sizes)
        for b in sizes[k:] + sizes[:k]:
            reps = 2 if b >= 16 * MiB else 5 if b >= MiB else 12
            dist.barrier(group=group)
            tm = time_callable(lambda t=bufs[b]: dist.all_reduce(t, group=group), warmup=2, repeats=reps,
                               device=ctx.device)
            times[b] += tm.times_s
    rows = []
    for b in sizes:
        med, low = statistics.median(times[b]), min(times[b])
        rows.append({"bytes": bufs[b].numel() * 4, "seconds": max(_gather(ctx, med)),
                     "min_seconds": max(_gather(ctx, low)), "repeats": len(times[b])})
    return rows


def _granularity(ctx, cfg: Config) -> list[dict]:
    from transformers import LlamaForCausalLM

    out = []
    for h in cfg.hidden_sizes:
        conf = sweep_config(h)
        torch.manual_seed(cfg.seed)
        with torch.device(ctx.device):
            m = LlamaForCausalLM(conf).eval()
        tp = parallel.tensor_parallel(copy.deepcopy(m), ctx.mesh, shard_vocab=False)
        comm = parallel.CommTimer(tp, shard_vocab=False, device=ctx.device)
        ids = prompt_ids(cfg.prompt_len, vocab_size=conf.vocab_size, seed=cfg.seed).to(ctx.device)
        n = cfg.new_tokens
        with ctx.solo():
            parallel.greedy(m, ids, n)
        parallel.greedy(tp, ids, n, comm)
        one = _references(ctx, lambda m=m: parallel.greedy(m, ids, n))
        r = rounds_together(ctx, {one_device_name(ctx.device.type): one[one_device_name(ctx.device.type)],
                                  "TP": (True, lambda tp=tp, comm=comm: _timed_gen(parallel.greedy(tp, ids, n, comm)))},
                            cfg.rounds)
        layer_bytes = sum(weight_bytes(x) for x in m.model.layers)
        out.append({"hidden": h, "intermediate": conf.intermediate_size, "layers": conf.num_hidden_layers,
                    "tp": ctx.world_size, "layer_weight_bytes": layer_bytes, "rounds": r})
        comm.remove()
        del m, tp
    return out


def lesson_worker(ctx, cfg_dict: dict) -> dict:
    """Everything notebook 04 measures, on one rank (see the module docstring). Rank 0 returns the results, with
    the seconds each part took (`part_s`)."""
    cfg = Config(**cfg_dict)
    parts = ["build", "equality", "TP timing", "PP bubble", "DP", "all-reduce sweep", "granularity"]
    res: dict = {"rank": ctx.rank, "threads": ctx.threads, "cores": ctx.cores, "backend": ctx.backend, "part_s": {}}
    clock = [time.perf_counter()]

    def part(i: int) -> None:
        now = time.perf_counter()
        if i > 0:
            res["part_s"][parts[i - 1]] = now - clock[0]
        clock[0] = now
        ctx.progress(i, len(parts), parts[i] if i < len(parts) else "done")

    part(0)
    full = build(cfg.model, layers=cfg.layers, device=str(ctx.device), seed=cfg.seed)
    tp = parallel.tensor_parallel(copy.deepcopy(full), ctx.mesh)
    comm = parallel.CommTimer(tp, device=ctx.device)
    mem = {"single": weight_bytes(full), "tp": weight_bytes(tp),
           "pp": weight_bytes(parallel.stage_module(full, ctx.rank, ctx.world_size)), "dp": weight_bytes(full)}
    ids = prompt_ids(cfg.prompt_len, vocab_size=full.config.vocab_size, seed=cfg.seed).to(ctx.device)
    pp_ids = prompt_ids(cfg.prompt_len, batch=ctx.world_size, vocab_size=full.config.vocab_size,
                        seed=cfg.seed + 2).to(ctx.device)
    part(1)
    res["equality"] = _equality(ctx, cfg, full, tp, comm, ids, pp_ids)
    mem["tp_kv"] = res["equality"]["tp_kv_bytes"]
    mem["single_kv"] = res["equality"].get("kv_bytes")
    res["memory"] = _gather_memory(ctx, mem)
    part(2)
    res["tp"] = _tp_timing(ctx, cfg, full, tp, comm, ids)
    comm.remove()
    del tp
    part(3)
    res["pp"] = _pp(ctx, cfg, full)
    part(4)
    res["dp"] = _dp(ctx, cfg, full)
    del full
    part(5)
    res["allreduce"] = _allreduce_sweep(ctx, cfg)
    part(6)
    res["granularity"] = _granularity(ctx, cfg)
    part(7)
    return res if ctx.rank == 0 else {"rank": ctx.rank}


def _gather_memory(ctx, mem: dict) -> list[dict]:
    import torch.distributed as dist

    got = [None] * ctx.world_size
    dist.all_gather_object(got, {"rank": ctx.rank, **mem}, group=ctx.mesh.get_group())
    return got


def killed_worker(ctx) -> None:
    """The last rank is killed from outside (SIGKILL, as the out-of-memory killer does) while rank 0 waits on it."""
    import os
    import signal

    import torch.distributed as dist

    if ctx.rank == ctx.world_size - 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier(group=ctx.mesh.get_group())
