"""Notebook 04's experiment: tensor, pipeline and data parallelism run on real ranks and measured against one process.

`run(cfg)` starts the ranks once (techniques.parallel.launch: process start-up is the costly part) and every rank works
through the parts in `lesson_worker`:
- equality: TP and PP greedy tokens and logits against the single process's;
- TP timing: prefill and decode steps of one process on all cores, one process on one rank's share (one
  "device"), and TP over all ranks, split into compute and collective time (labkit.techniques.parallel.CommTimer);
- PP: the GPipe bubble against the number of micro-batches, and the batch's time against one process;
- DP: replicas serving their shares of one request trace against one process serving it all;
- communication: all-reduce time against message size; C14's granularity sweep over hidden sizes;
- memory: bytes each rank holds under each split.
Timed candidates run side by side in rotating rounds (labkit.core.bench.run_rounds) on rank 0, which tells the other
ranks which candidate comes next; a candidate for one process runs on rank 0 alone with all the cores while the
others wait in the broadcast (blocked, not spinning). The tables, the planner comparison (13B/32B/70B on the
reference cards), the interconnect prediction and the verdict inputs are built here from the ranks' results.
"""

from __future__ import annotations

import contextlib
import copy
import io
import statistics
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from labkit.core.bench import Rounds, run_rounds, time_callable
from labkit.core.models import ShapeSpec, build, prompt_ids, shape, weight_bytes
from labkit.techniques import parallel

MiB, GiB = 2**20, 2**30

PLANNED = ("llama-2-13b", "qwen2.5-32b", "llama-2-70b")

# Datasheet constants (labelled as such in every table): one direction of a GPU-to-GPU link, GB/s.
LINKS_GBPS = {
    "NVLink 4 (H100 SXM, datasheet 900 GB/s both ways)": 450.0,
    "NVLink 3 (A100 SXM, datasheet 600 GB/s both ways)": 300.0,
    "PCIe 5.0 x16 (datasheet)": 64.0,
    "PCIe 4.0 x16 (datasheet)": 32.0,
}


@dataclass
class Config:
    """What the ranks measure; every size comes from the notebook's parameters."""

    model: str = "llama-2-7b"
    layers: int = 2
    seed: int = 0
    device: str = "cpu"
    world_size: int = 2
    prompt_len: int = 32
    new_tokens: int = 6
    rounds: int = 3
    pp_batch: int = 4
    pp_len: int = 16
    micro_batches: list[int] = field(default_factory=lambda: [1, 2, 4])
    n_requests: int = 4
    output_len: tuple[int, int] = (4, 8)
    message_bytes: list[int] = field(default_factory=lambda: [4 * 4**k for k in range(0, 12, 2)])
    hidden_sizes: list[int] = field(default_factory=lambda: [2048, 512, 128])

    def check(self) -> Config:
        """Every constraint before a process starts: world size against cores/GPUs, heads against the TP degree,
        layers against the stages, the batch against the micro-batches."""
        parallel.check_world_size(self.world_size, self.device)
        parallel.check_tp(shape(self.model), self.world_size)  # a ShapeSpec names its heads as a config does
        parallel.check_stages(self.layers, self.world_size)
        for m in self.micro_batches:
            parallel.check_microbatches(self.pp_batch, m)
        for h in self.hidden_sizes:
            parallel.check_tp(_sweep_config(h), self.world_size)
        return self


PRESETS = {
    "ci": {"layers": 2, "prompt_len": 32, "new_tokens": 6, "rounds": 2, "micro_batches": [1, 2, 4], "pp_batch": 4,
           "pp_len": 16, "n_requests": 4, "output_len": (4, 8), "largest_message": 4 * 4**12,
           "hidden_sizes": [2048, 512, 128]},
    "full": {"layers": 4, "prompt_len": 512, "new_tokens": 16, "rounds": 5, "micro_batches": [1, 2, 4, 8],
             "pp_batch": 8, "pp_len": 128, "n_requests": 8, "output_len": (16, 64), "largest_message": 4 * 4**14,
             "hidden_sizes": [4096, 2048, 1024, 512, 256, 128]},
}


def lesson_config(preset: str, model: str, device: str, seed: int, world_size: int, **sizes) -> Config:
    """Notebook 04's parameters, checked at once: a size left as None follows the preset (params.default), a given
    one is checked; then every constraint of the split (Config.check). The preset's hidden sizes keep only those
    whose heads divide by `world_size`; hidden sizes you give must all fit."""
    from labkit.core import params

    params.check("seed", seed, int)
    params.check("world_size", world_size, int, min=1)
    p = params.pick(preset, **PRESETS)
    got = {}
    for name in ("layers", "prompt_len", "rounds", "pp_batch"):
        got[name] = params.default(name, sizes.pop(name, None), preset, ci=PRESETS["ci"][name],
                                   full=PRESETS["full"][name], min=1)
    got["new_tokens"] = params.default("new_tokens", sizes.pop("new_tokens", None), preset,
                                       ci=PRESETS["ci"]["new_tokens"], full=PRESETS["full"]["new_tokens"], min=2)
    got["n_requests"] = params.default("n_requests", sizes.pop("n_requests", None), preset,
                                       ci=PRESETS["ci"]["n_requests"], full=PRESETS["full"]["n_requests"],
                                       min=world_size)
    for name in ("micro_batches", "hidden_sizes"):
        given = sizes.pop(name, None)
        vals = params.default(name, given, preset, ci=PRESETS["ci"][name], full=PRESETS["full"][name], kind=list)
        for v in vals:
            params.check(f"{name} item", v, int, min=1)
        if name == "hidden_sizes" and given is None:
            vals = [h for h in vals if _sweep_config(h).num_attention_heads % world_size == 0]
        got[name] = list(vals)
    if sizes:
        raise params.ParamError(f"unknown size parameter(s) {sorted(sizes)}")
    largest = p["largest_message"]
    msgs = [4 * 4**k for k in range(20) if 4 * 4**k <= largest]
    return Config(model=model, seed=seed, device=device, world_size=world_size, pp_len=p["pp_len"],
                  output_len=p["output_len"], message_bytes=msgs, **got).check()


# ---------------------------------------------------------------- the ranks

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


ALL_CORES, ONE_SHARE, ONE_GPU = "one process, all cores", "one process, one rank's cores", "one process, one GPU"


def solo_name(device_type: str) -> str:
    """The one-process baseline: the whole machine on a CPU, one GPU with CUDA."""
    return ONE_GPU if device_type == "cuda" else ALL_CORES


def one_device_name(device_type: str) -> str:
    """One rank's share of the machine alone: what each rank of a split brings (one core here, one GPU)."""
    return ONE_GPU if device_type == "cuda" else ONE_SHARE


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


def _sweep_config(hidden: int, layers: int = 2, vocab: int = 256):
    """A small Llama at `hidden` with Llama-2-7B's proportions (MLP 2.6875x hidden, heads of 128, or of 64 up to
    512): the shapes of C14's granularity sweep. A 256-token vocabulary keeps the embedding and head negligible."""
    from transformers import LlamaConfig

    head_dim = 128 if hidden > 512 else 64
    heads = hidden // head_dim
    inter = int(round(hidden * 11008 / 4096 / 128)) * 128
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, head_dim=head_dim,
                       max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _granularity(ctx, cfg: Config) -> list[dict]:
    from transformers import LlamaForCausalLM

    out = []
    for h in cfg.hidden_sizes:
        conf = _sweep_config(h)
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


def refusals(cfg: Config) -> list[dict]:
    """Bad choices asked on purpose, each with the error that names its constraint (nothing is started)."""
    spec = shape(cfg.model)
    most = parallel.max_world_size(cfg.device)
    bad_tp = next(d for d in range(2, 1000) if spec.num_attention_heads % d or spec.num_key_value_heads % d)
    asks = {f"world size {most + 1} with {most} {'cores' if cfg.device == 'cpu' else 'GPUs'}":
            lambda: parallel.check_world_size(most + 1, cfg.device),
            f"TP={bad_tp} on {spec.name}": lambda: parallel.check_tp(spec, bad_tp),
            f"{cfg.layers + 1} layers in {cfg.world_size} pipeline stages":
            lambda: parallel.check_stages(cfg.layers + 1, cfg.world_size),
            f"a batch of {cfg.pp_batch} in {cfg.pp_batch + 1} micro-batches":
            lambda: parallel.check_microbatches(cfg.pp_batch, cfg.pp_batch + 1)}
    rows = []
    for asked, fn in asks.items():
        try:
            fn()
            rows.append({"asked": asked, "refused with": "(accepted)"})
        except parallel.ParallelError as e:
            rows.append({"asked": asked, "refused with": str(e)})
    return rows


def _killed(ctx) -> None:
    """The last rank is killed from outside (SIGKILL, as the out-of-memory killer does) while rank 0 waits on it."""
    import os
    import signal

    import torch.distributed as dist

    if ctx.rank == ctx.world_size - 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier(group=ctx.mesh.get_group())


def kill_demo(world_size: int = 2) -> dict:
    """A rank dies mid-run: what the launcher says, and how many rank processes are left (none). On CPU cores:
    this is about processes, not devices."""
    try:
        parallel.launch(_killed, world_size, timeout_s=120)
        error = "(no error: the rank was not killed)"
    except parallel.RankFailed as e:
        error = str(e)
    return {"error": error, "rank processes still running": len(parallel.running_ranks())}


def pick_device(device: str, world_size: int) -> tuple[str, str | None]:
    """The device the ranks use ("auto", "cpu" or "cuda" asked) and, when NCCL does not run, why: enough CUDA GPUs
    run NCCL (one per rank); otherwise the ranks run on CPU cores with gloo, the same code path. Asking for "cuda"
    without a GPU per rank is an error naming how many there are."""
    if device not in ("auto", "cpu", "cuda"):
        raise parallel.ParallelError(f"unknown device {device!r}; choose 'auto', 'cpu' or 'cuda'")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cuda" or (device == "auto" and n >= world_size):
        parallel.check_world_size(world_size, "cuda")
        return "cuda", None
    why = (f"NCCL needs {world_size} CUDA GPUs, one per rank; this machine has {n}" if n < world_size else
           "device='cpu' was asked for")
    return "cpu", f"NCCL on {world_size} GPUs: skipped ({why}); the ranks run on CPU cores with gloo"


def run(cfg: Config) -> dict:
    """Start the ranks once, run `lesson_worker` on each and return rank 0's results with the launch's details
    and the machine's load over the whole run (the ranks are this process's children, so they count as ours)."""
    from labkit.core.bench import LoadWatch

    cfg.check()
    t0 = time.perf_counter()
    with LoadWatch() as watch:
        results = parallel.launch(lesson_worker, cfg.world_size, asdict(cfg), device=cfg.device,
                                  desc=f"{cfg.world_size} ranks ({parallel.BACKENDS[cfg.device]})")
    res = results[0]
    res["wall_s"] = time.perf_counter() - t0
    res["load"] = watch.result
    return res


# ---------------------------------------------------------------- tables (from the ranks' results)

def rounds_of(d: dict) -> Rounds:
    """A Rounds measured on rank 0, rebuilt from its JSON form."""
    return Rounds(d["names"], d["cold"], d["values"], d.get("load", {}))


def _split_name(r: Rounds, prefix: str) -> str:
    return next(n for n in r.names if n.startswith(prefix))


def _refs(r: Rounds) -> list[str]:
    return [n for n in r.names if not n.startswith(("TP", "PP", "DP"))]


def tp_table(res: dict, spec: ShapeSpec, layers: int, hw, prompt_len: int, new_tokens: int):
    """Per phase (the prefill, one decode step): each run's median time, TP's split into compute and collectives,
    the roofline floor of the model that was built on this machine (`hw`) and the fraction of it reached, and TP
    against each one-process run (measured side by side, median of per-round ratios)."""
    import pandas as pd

    from labkit.core.roofline import decode_floor, prefill_floor

    r, eq = rounds_of(res["tp"]), res["equality"]
    tp = _split_name(r, "TP=")
    floors = {"prefill": prefill_floor(spec, "fp32", hw, prompt_len, 1, layers),
              "decode": decode_floor(spec, "fp32", hw, prompt_len + new_tokens // 2, 1, layers)}
    comm = {"prefill": eq["comm_per_prefill"], "decode": eq["comm_per_decode_step"]}
    rows = []
    for phase in ("prefill", "decode"):
        for name in r.names:
            t = r.median(name, phase)
            c = r.median(name, f"{phase}_comm") if name == tp else None
            rows.append({"phase": phase, "run": name, "ms": 1e3 * t, "compute ms": 1e3 * (t - (c or 0.0)),
                         "collectives ms": None if c is None else 1e3 * c,
                         "collectives": comm[phase][0] if name == tp else None,
                         "MiB through collectives": comm[phase][1] / MiB if name == tp else None,
                         "floor ms": 1e3 * floors[phase].seconds, "fraction of floor": floors[phase].seconds / t,
                         f"{tp} vs this run": None if name == tp else r.ratio(name, tp, phase).words()})
    return pd.DataFrame(rows)


def bus_factor(world_size: int) -> float:
    """Bytes each rank's link carries per byte all-reduced by a ring: 2(n-1)/n (nccl-tests' bus bandwidth)."""
    return 2 * (world_size - 1) / world_size


def allreduce_fit(rows: list[dict], world_size: int, small_bytes: int = 4096) -> dict:
    """This machine's all-reduce as a latency and a bandwidth: the latency floor is the median time of the messages
    up to `small_bytes` (where the bytes cost nothing next to it), the bus bandwidth (nccl-tests' definition:
    size x 2(n-1)/n / time) the largest message's after that floor. `allreduce_time` predicts any size."""
    small = [r["seconds"] for r in rows if r["bytes"] <= small_bytes]
    small = small or [min(rows, key=lambda r: r["bytes"])["seconds"]]
    large = max(rows, key=lambda r: r["bytes"])
    latency = statistics.median(small)
    busbw = large["bytes"] * bus_factor(world_size) / max(large["seconds"] - latency, 1e-12)
    return {"latency_s": latency, "busbw_gbps": busbw / 1e9, "world_size": world_size, "small_bytes": small_bytes,
            "largest_bytes": large["bytes"], "largest_s": large["seconds"]}


def allreduce_time(fit: dict, nbytes: float) -> float:
    """The fitted time of one all-reduce of `nbytes`: latency + bytes on the link / bus bandwidth."""
    return fit["latency_s"] + nbytes * bus_factor(fit["world_size"]) / (fit["busbw_gbps"] * 1e9)


def interconnect(res: dict, fit: dict) -> list[dict]:
    """When would TP pay for this shape? Per phase and one-process run: TP pays if its collectives fit in the time
    its split compute saves (budget = that run's time - TP's compute). From the budget: the link bandwidth needed
    at zero latency and the latency allowed per collective at infinite bandwidth; next to them, the collectives
    measured inside the model, the all-reduce sweep's prediction for the same bytes, and the time each datasheet
    link needs to carry them (bandwidth only: datasheets give no latency)."""
    r, eq = rounds_of(res["tp"]), res["equality"]
    tp, f = _split_name(r, "TP="), bus_factor(fit["world_size"])
    rows = []
    for phase, (k, nbytes) in (("prefill", eq["comm_per_prefill"]), ("decode", eq["comm_per_decode_step"])):
        compute = r.median(tp, phase) - r.median(tp, f"{phase}_comm")
        for ref in _refs(r):
            budget = r.median(ref, phase) - compute
            row = {"phase": phase, "against": ref, "its ms": 1e3 * r.median(ref, phase), "TP compute ms": 1e3 * compute,
                   "budget ms": 1e3 * budget, "collectives": k, "MiB": nbytes / MiB,
                   "measured in the model ms": 1e3 * r.median(tp, f"{phase}_comm"),
                   "all-reduce sweep predicts ms": 1e3 * k * allreduce_time(fit, nbytes / max(k, 1)),
                   "needed GB/s at zero latency": nbytes * f / budget / 1e9 if budget > 0 else None,
                   "allowed us per collective": 1e6 * budget / max(k, 1) if budget > 0 else None}
            for link, gbps in LINKS_GBPS.items():
                row[f"{link} ms"] = 1e3 * nbytes * f / (gbps * 1e9)
            rows.append(row)
    return rows


def link_need(model: str, card: str, tokens: int, dtype: str = "fp16", tp: int = 2) -> list[dict]:
    """Two GPUs from the datasheets: TP splits a step's floor (roofline, whole model on one `card`) over `tp`
    cards, and adds 2 all-reduces per layer of tokens x hidden activations. The link pays if it carries them in
    the time saved: the bandwidth that takes at zero latency and the latency allowed at infinite bandwidth,
    for the prefill of `tokens` and one decode step at that context."""
    from labkit.core.roofline import act_bytes, decode_floor, prefill_floor
    from labkit.core.roofline import card as ref_card

    spec, hw = shape(model), ref_card(card)
    rows = []
    for phase, floor, n in (("prefill", prefill_floor(spec, dtype, hw, tokens), tokens),
                            ("decode", decode_floor(spec, dtype, hw, tokens), 1)):
        saved = floor.seconds * (1 - 1 / tp)
        k = 2 * spec.num_hidden_layers
        nbytes = k * n * spec.hidden_size * act_bytes(dtype)
        row = {"model": model, "cards": f"{tp}x {card}", "phase": f"{phase} ({tokens} tokens)" if phase == "prefill"
               else f"decode step (context {tokens})", "floor on one card ms": 1e3 * floor.seconds,
               "saved by TP ms": 1e3 * saved, "collectives": k, "MiB": nbytes / MiB,
               "needed GB/s at zero latency": nbytes * bus_factor(tp) / saved / 1e9,
               "allowed us per collective": 1e6 * saved / k}
        for link, gbps in LINKS_GBPS.items():
            row[f"{link} ms"] = 1e3 * nbytes * bus_factor(tp) / (gbps * 1e9)
        rows.append(row)
    return rows


def granularity_rows(res: dict) -> list[dict]:
    """C14: per hidden size and phase, one rank's share of the machine against TP over all the ranks: the compute
    TP saves (one rank's time - TP's compute) against the collectives it adds."""
    out = []
    for g in res["granularity"]:
        r = rounds_of(g["rounds"])
        one, tp = _refs(r)[0], "TP"
        for phase in ("prefill", "decode"):
            t1, t, c = r.median(one, phase), r.median(tp, phase), r.median(tp, f"{phase}_comm")
            saved = t1 - (t - c)
            out.append({"hidden": g["hidden"], "phase": phase,
                        "shard MiB per rank per layer": g["layer_weight_bytes"] / g["layers"] / MiB / g["tp"],
                        "one rank ms": 1e3 * t1, "TP ms": 1e3 * t, "TP compute ms": 1e3 * (t - c),
                        "collectives ms": 1e3 * c, "compute saved ms": 1e3 * saved,
                        "collectives / saved": c / saved if saved > 0 else None,
                        "TP against one rank": r.ratio(one, tp, phase).words()})
    return out


def bubble_rows(res: dict, stages: int) -> list[dict]:
    """Measured bubble (1 - mean stage busy time / step time) against GPipe's (S - 1) / (M + S - 1), and the step
    against one process."""
    r = rounds_of(res["pp"])
    one = _refs(r)[0]
    rows = []
    for name in r.names:
        if name == one:
            continue
        m = int(name.split(", ")[1].split()[0])
        rows.append({"micro-batches": m, "measured bubble": r.median(name, "bubble"),
                     "formula (S-1)/(M+S-1)": (stages - 1) / (m + stages - 1), "step ms": 1e3 * r.median(name),
                     "busiest stage ms": 1e3 * r.median(name, "busy_max"), f"{one} ms": 1e3 * r.median(one),
                     "PP against one process": r.ratio(one, name).words(),
                     "max logit diff": max(r.values[name]["max_logit_diff"])})
    return rows


def dp_row(res: dict) -> dict:
    """Two replicas' throughput on halves of the trace against one process serving it all."""
    d = res["dp"]
    r = rounds_of(d["rounds"])
    one, dp = r.names
    ratio = r.ratio(one, dp, "throughput", higher_is_better=True)
    return {f"{one} tok/s": r.median(one, "throughput"), f"{dp} tok/s": r.median(dp, "throughput"),
            "replicas against one process": ratio.words("more throughput", "less throughput"), "ratio": ratio.value,
            "conclusive": ratio.conclusive, "same tokens": d["dp_tokens_equal"], "requests": d["requests"],
            "output tokens": d["output_tokens"]}


def memory_rows(res: dict, spec: ShapeSpec, layers: int, context: int) -> list[dict]:
    """Bytes each rank holds under each split, measured on the ranks, next to the planner's share of the model
    that was built (its layers): weights / n and KV cache / n for TP and PP, everything for a DP replica. PP's KV
    cache is not measured: this pipeline recomputes its window instead of caching."""
    from labkit.core.planner import memory_plan

    plan = memory_plan(replace(spec, name=f"{spec.name} ({layers} layers)", num_hidden_layers=layers), "fp32",
                       context)
    n = len(res["memory"])
    splits = (("one process", "single", 1), (f"TP={n}", "tp", n), (f"PP={n}", "pp", n), (f"DP={n} replica", "dp", 1))
    rows = []
    for split, key, share in splits:
        for m in res["memory"]:
            if key == "single" and m["rank"] != 0:
                continue
            kv = {"single": m.get("single_kv"), "tp": m.get("tp_kv")}.get(key)
            rows.append({"split": split, "rank": m["rank"], "weights MiB": m[key] / MiB,
                         "planner weights MiB": plan.weights / share / MiB,
                         "measured / planner": m[key] / (plan.weights / share),
                         "KV cache KiB": kv / 1024 if kv else None,
                         "planner KV KiB": plan.kv_cache / share / 1024 if key in ("single", "tp") else None})
    return rows


def split_fractions(res: dict) -> dict[str, float]:
    """Each split's largest per-rank weight bytes as a fraction of the whole model's: what C3 and C8 are about."""
    mem = res["memory"]
    whole = mem[0]["single"]
    n = len(mem)
    return {f"TP={n}": max(m["tp"] for m in mem) / whole, f"PP={n}": max(m["pp"] for m in mem) / whole,
            f"DP={n}": max(m["dp"] for m in mem) / whole}


def reference_rows(models_: tuple[str, ...] = PLANNED, dtype: str = "fp16", context: int = 4096,
                   batch: int = 1) -> list[dict]:
    """The planner for the guide's sizes on the reference cards (datasheets): the fewest cards that hold each with
    TP alone inside one 8-card node, or, beyond a node, TP 8 x PP stages across nodes."""
    from labkit.core.planner import cards_needed, memory_plan, supports, usable_bytes
    from labkit.core.roofline import REFERENCE_CARDS

    rows = []
    for name in models_:
        plan = memory_plan(name, dtype, context, batch)
        row = {"model": name, "dtype": dtype, "context": context, "batch": batch, "total GiB": plan.total / GiB}
        for hw in REFERENCE_CARDS.values():
            if not supports(hw, dtype):
                row[hw.name] = f"no {dtype}"
                continue
            n = cards_needed(plan, hw)
            more = next((k for k in (16, 32, 64) if plan.per_card(k) <= usable_bytes(hw)), None)
            row[hw.name] = f"{n} (TP {n})" if n else (f"{more} (TP 8 x PP {more // 8})" if more else "> 64")
        rows.append(row)
    return rows


# ---------------------------------------------------------------- figures

def plot_tp(table):
    """Stacked bars: compute and collectives of each run, prefill and one decode step side by side."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (phase, g) in zip(axes, table.groupby("phase", sort=False), strict=True):
        comm = g["collectives ms"].fillna(0.0)
        ax.barh(g["run"], g["compute ms"], label="compute")
        ax.barh(g["run"], comm, left=g["compute ms"], label="collectives")
        ax.axvline(g["floor ms"].iloc[0], ls="--", color="gray", lw=1, label="roofline floor (whole machine)")
        ax.set(xlabel="ms", title=f"{phase}" + (" (one step)" if phase == "decode" else ""))
        ax.set_xlim(0, 1.08 * max((g["compute ms"] + comm).max(), g["floor ms"].iloc[0]))
        ax.invert_yaxis()
    axes[1].set_yticklabels([])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    return fig


def plot_allreduce(rows: list[dict], fit: dict):
    """All-reduce time against message size (log-log) with the latency + bandwidth model."""
    import matplotlib.pyplot as plt

    s = np.array([r["bytes"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(s, [1e6 * r["seconds"] for r in rows], "o-", label="measured median (slowest rank)")
    grid = np.logspace(np.log10(s.min()), np.log10(s.max()), 50)
    ax.plot(grid, [1e6 * allreduce_time(fit, x) for x in grid], "--",
            label=f"model: latency {1e6 * fit['latency_s']:,.0f} us + bytes x 2(n-1)/n / {fit['busbw_gbps']:.2f} GB/s")
    ax.set(xscale="log", yscale="log", xlabel="message size (bytes)", ylabel="time per all-reduce (us)",
           title=f"All-reduce over {fit['world_size']} ranks on this machine")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def plot_granularity(rows: list[dict]):
    """C14: compute saved by TP against the collectives it adds, by shard size, per phase."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
    for ax, phase in zip(axes, ("prefill", "decode"), strict=True):
        g = sorted((r for r in rows if r["phase"] == phase), key=lambda r: r["shard MiB per rank per layer"])
        x = [r["shard MiB per rank per layer"] for r in g]
        ax.plot(x, [r["compute saved ms"] for r in g], "o-", label="compute saved (one rank - TP compute)")
        ax.plot(x, [r["collectives ms"] for r in g], "s-", label="collectives added")
        ax.axhline(0, color="gray", lw=0.8)
        for r in g:
            ax.annotate(f"h={r['hidden']}", (r["shard MiB per rank per layer"], r["collectives ms"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set(xscale="log", xlabel="weights per rank per layer (MiB, log)", ylabel="ms",
               title=f"{phase}: TP pays where saved > added")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_bubble(rows: list[dict], stages: int = 2):
    """Measured bubble against GPipe's formula, by micro-batches, with the step time on a second axis."""
    import matplotlib.pyplot as plt

    m = [r["micro-batches"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(m, [r["measured bubble"] for r in rows], "o-", label="measured bubble")
    ax.plot(m, [r["formula (S-1)/(M+S-1)"] for r in rows], "--", label="(S-1)/(M+S-1)")
    from matplotlib.ticker import NullFormatter

    ax.set(xscale="log", xlabel="micro-batches M", ylabel="idle fraction of the step", ylim=(0, 1),
           title=f"Pipeline bubble, {stages} stages (GPipe)")
    ax.set_xticks(m, [str(x) for x in m])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax2 = ax.twinx()
    ax2.plot(m, [r["step ms"] for r in rows], "^:", color="tab:red", label="step time (right axis)")
    ax2.set_ylabel("step ms", color="tab:red")
    ax2.set_ylim(0, max(r["step ms"] for r in rows) * 1.15)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
    return fig


# ---------------------------------------------------------------- sentences built from the numbers

def _row(table, phase: str, prefix: str):
    g = table[(table["phase"] == phase) & table["run"].str.startswith(prefix)]
    return None if g.empty else g.iloc[0]


def _link(row: dict, prefix: str) -> float:
    """A datasheet link's column of an interconnect row (ms), by the start of its name."""
    return next(v for k, v in row.items() if k.startswith(prefix))


def _than(words: str, name: str, ms: float | None = None) -> str:
    """'1.27x slower than X (89.2 ms)', or 'no clear difference from X: inconclusive (...)'."""
    at = "" if ms is None else f" ({ms:.1f} ms)"
    if words.startswith("inconclusive"):
        return f"no clear difference from {name}{at}: {words}"
    return f"{words} than {name}{at}"


def floor_notes(table, spec: ShapeSpec, layers: int, hw, prompt_len: int, new_tokens: int) -> str:
    """Why each phase of one process on the whole machine lands where it does against its roofline floor: the
    FLOP/s and the weight bytes/s it reached, next to the profile's peak and bandwidth."""
    from labkit.core.roofline import decode_floor, prefill_floor

    floors = {"prefill": prefill_floor(spec, "fp32", hw, prompt_len, 1, layers),
              "decode": decode_floor(spec, "fp32", hw, prompt_len + new_tokens // 2, 1, layers)}
    out = []
    for phase, f in floors.items():
        row = table[table["phase"] == phase].iloc[0]
        t = row["ms"] / 1e3
        gflops, gbps = f.flops / t / 1e9, f.bytes / t / 1e9
        s = (f"{phase}, {row['run']}: {row['fraction of floor']:.0%} of its {f.bound}-bound floor; it ran at "
             f"{gflops:,.1f} GFLOP/s (profile peak {hw.peak('fp32') / 1e9:,.1f}) and read {gbps:,.1f} GB/s "
             f"(profile bandwidth {hw.bandwidth_gbps:,.1f})")
        if row["fraction of floor"] > 1:
            s += (": faster than the floor, so the bandwidth probe of notebook 01 reads slower than these matrix "
                  "kernels do; the floor is a prediction from a probe, not a law")
        elif row["fraction of floor"] < 1 / 1.5:
            s += (f": at {prompt_len} tokens per matrix the fp32 kernels stay well below the probe's peak, which "
                  "large square products reach" if f.bound == "compute" else
                  ": the step is dominated by costs other than reading weights (per-operation overhead, attention)")
        out.append(s + ".")
    return "\n".join(f"- {x}" for x in out)


def tp_story(table, inter: list[dict], fit: dict, breakdown: dict | None = None) -> str:
    """Why TP is slower (or not) than one process here, and what link would make it pay, per phase (markdown).
    `breakdown`: parallel.collective_breakdown of one TP generation (waiting for the other rank against the rest)."""
    out = []
    for phase in ("prefill", "decode"):
        tp = _row(table, phase, "TP=")
        solo = table[(table["phase"] == phase)].iloc[0]
        share = _row(table, phase, ONE_SHARE)
        k, name = int(tp["collectives"]), tp["run"]
        iso = 1e3 * allreduce_time(fit, MiB * tp["MiB through collectives"] / k)
        gain = solo["ms"] / tp["compute ms"]
        lines = [f"{name} takes {tp['ms']:.1f} ms, {_than(solo[name + ' vs this run'], solo['run'], solo['ms'])}."]
        if gain < 1.1:
            lines.append(f"Its compute alone takes {tp['compute ms']:.1f} ms per rank, "
                         + ("more than" if gain < 1 else f"only {gain:.2f}x less than")
                         + " one process's whole step: one process already uses every core and all the memory "
                         "bandwidth that the ranks share, so splitting the weights splits the work without adding "
                         "hardware.")
        else:
            lines.append(f"Its compute alone takes {tp['compute ms']:.1f} ms per rank, {gain:.2f}x less than one "
                         "process's step.")
        lines.append(f"Its {k} collectives add {tp['collectives ms']:.1f} ms ({tp['collectives ms'] / k:.2f} ms each; "
                     f"an all-reduce of that size alone takes {iso:.2f} ms here).")
        if share is not None:
            lines.append(f"Against one rank's share of the machine ({share['ms']:.1f} ms: what each rank brings, as "
                         f"each GPU would), {name} is {share[name + ' vs this run']}.")
        for r in (x for x in inter if x["phase"] == phase):
            if r["needed GB/s at zero latency"] is None:
                lines.append(f"Against {r['against']}, no link can make it pay: TP's compute alone "
                             f"({r['TP compute ms']:.1f} ms) already exceeds that run ({r['its ms']:.1f} ms).")
                continue
            measured = r["measured in the model ms"]
            lines.append(
                f"Against {r['against']}, the collectives must fit in {r['budget ms']:.1f} ms (its "
                f"{r['its ms']:.1f} ms minus TP's compute): a link of at least {r['needed GB/s at zero latency']:.3f} "
                f"GB/s at zero latency, or at most {r['allowed us per collective']:,.0f} us per collective at "
                f"infinite bandwidth. Here they took {measured:.1f} ms "
                f"({'inside' if measured < r['budget ms'] else 'outside'} it); a bare all-reduce of these sizes "
                f"would take {r['all-reduce sweep predicts ms']:.1f} ms; NVLink 3 would carry the bytes in "
                f"{1e3 * _link(r, 'NVLink 3'):.1f} us and PCIe 4.0 x16 in {1e3 * _link(r, 'PCIe 4.0'):.1f} us "
                "(datasheet bandwidth; latency comes on top).")
        title = "Prefill" if phase == "prefill" else "Decode step"
        out.append(f"**{title}**\n\n" + "\n".join(f"- {x}" for x in lines))
    if breakdown and breakdown.get("collectives"):
        b = breakdown
        out.append(f"**Inside a collective** ({b['collectives']} collectives of a warm TP generation, stamped on "
                   f"{b['ranks']} ranks with the clock they share): typically (medians) a collective waits "
                   f"{1e3 * b['median_wait_s']:.2f} ms for the other rank to arrive and takes "
                   f"{1e3 * b['median_after_arrival_s']:.2f} ms after it did, against {1e3 * fit['latency_s']:.2f} ms "
                   "for a bare small all-reduce: the difference is DTensor's bookkeeping and the hand-off to gloo's "
                   f"thread. On average each took {1e3 * b['mean_s']:.2f} ms and the worst {1e3 * b['max_s']:.1f} ms: "
                   "every collective waits for all ranks, so a rank that the operating system pauses holds up the "
                   "others.")
    return "\n\n".join(out)


def _share(x: float) -> str:
    return f"{x:.0%}" if x >= 0.01 else "under 1%"


def gpu_story(rows: list[dict]) -> str:
    """What two datasheet GPUs need from their link, per phase (from `link_need`)."""
    out = []
    for r in rows:
        nv, pcie = _link(r, "NVLink 3"), _link(r, "PCIe 4.0")
        saved = r["saved by TP ms"]
        out.append(f"{r['model']} on {r['cards']}, {r['phase']}: TP saves {saved:.2f} ms of a "
                   f"{r['floor on one card ms']:.2f} ms floor and must all-reduce {r['MiB']:.1f} MiB in "
                   f"{r['collectives']} collectives within it: the bytes take {_share(nv / saved)} of that on "
                   f"NVLink 3 and {_share(pcie / saved)} on PCIe 4.0 x16 (datasheet rates), and each collective must "
                   f"also start and finish within {r['allowed us per collective']:.0f} us on average (latency: not "
                   "on a datasheet).")
    return "\n".join(f"- {x}" for x in out)


def meaning(res: dict, table, bubble: list[dict], dp: dict, mem: list[dict]) -> str:
    """'What this means', each point built from this run's numbers."""
    eq = res["equality"]
    n = len(res["memory"])
    same = eq["tp_tokens_equal"] and eq["pp_tokens_equal"]
    dec = table[table["phase"] == "decode"]
    tp = dec[dec["run"].str.startswith("TP=")].iloc[0]
    solo = dec.iloc[0]
    share = dec[dec["run"] == ONE_SHARE]
    ratios = [r["measured / planner"] for r in mem]
    fr = split_fractions(res)
    first, last = bubble[0], bubble[-1]
    best = min(bubble, key=lambda r: r["step ms"])
    dp_words = _than(dp["replicas against one process"], "one process on all cores")
    same_dp = ("every request got the same tokens as from one process" if dp["same tokens"] else
               "but NOT the same tokens as one process")
    pts = [
        f"TP={n} and PP={n} gave {'exactly' if same else 'NOT'} the single process's greedy tokens (largest logit "
        f"difference {eq['tp_max_logit_diff']:.1e} for TP, {eq['pp_max_logit_diff']:.1e} for PP): a split changes "
        "where the arithmetic happens and the order of some sums, not what is computed.",
        f"A TP={n} decode step was {_than(solo[tp['run'] + ' vs this run'], solo['run'], solo['ms'])}. On one box TP "
        "re-divides the cores and memory bandwidth that one process already uses, and adds "
        f"{int(tp['collectives'])} collectives per step"
        + (f"; against one rank's share alone it was {share.iloc[0][tp['run'] + ' vs this run']}, which is the GPU "
           "case, where each rank brings its own memory and arithmetic." if not share.empty else "."),
        f"The pipeline bubble followed (S-1)/(M+S-1): {first['measured bubble']:.2f} measured against "
        f"{first['formula (S-1)/(M+S-1)']:.2f} at {first['micro-batches']} micro-batch, {last['measured bubble']:.2f} "
        f"against {last['formula (S-1)/(M+S-1)']:.2f} at {last['micro-batches']}. The step took {first['step ms']:.0f} "
        f"ms at {first['micro-batches']}, {best['step ms']:.0f} ms at best ({best['micro-batches']}) and "
        f"{last['step ms']:.0f} ms at {last['micro-batches']}"
        + (": each micro-batch re-reads its stage's weights, so a smaller bubble pays only while micro-batches stay "
           "large enough to be compute-bound." if last["step ms"] > best["step ms"] else
           ": every added micro-batch shortened the step, so try more.")
        + " PP is for fitting a "
        f"model; on one box, at {first['micro-batches']} micro-batch, its step was "
        + _than(first["PP against one process"], "one process", next(v for k, v in first.items() if
                                                                   k.startswith("one process"))) + ".",
        f"{n} replicas serving shares of the trace: {dp_words} ({same_dp}). Replicas need no communication, so on "
        f"{n} machines throughput would add up to {n}x; "
        + (f"on one box they reached {dp['ratio']:.2f}x because they share its memory bandwidth, which decode is "
           "bound by." if dp["ratio"] < 0.8 * n else f"on this box they came close ({dp['ratio']:.2f}x)."),
        f"Bytes per rank, measured: TP {fr[f'TP={n}']:.2f} and PP {fr[f'PP={n}']:.2f} of the model, a DP replica "
        f"{fr[f'DP={n}']:.2f}; measured / planner {min(ratios):.3f}-{max(ratios):.3f}. So the planner's per-card "
        "figures for 13B, 32B and 70B below are what a split really holds.",
    ]
    return "\n".join(f"- {p}" for p in pts)

