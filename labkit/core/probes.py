"""What this machine can do, measured: memory bandwidth, matrix throughput per dtype at LLM shapes, and a real
model's decode and prefill speed.

Measured, never looked up (datasheet numbers live in labkit.core.roofline): notebook 01 runs these probes twice
and stores their summary as the profile every later lesson's floors come from; the case study times
`matrix_kernel` in its own rounds. Disk and model-loading probes are in labkit.core.storage.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from dataclasses import dataclass

import torch

from labkit.core.bench import Timing, generate_timed, time_callable
from labkit.core.onednn import FBGEMM, int8_kernel
from labkit.core.units import TORCH_DTYPES, MiB

PROBE_DTYPES = ("fp32", "bf16", "fp16", "int8")


@dataclass
class Probe:
    """One measured kernel: the bytes it moved and FLOPs it did, and its timing (median of repeats).

    `skipped` holds the reason when the probe cannot run here (no CUDA, dtype unsupported); then no
    timing and no rate: a missing number is reported as missing, never guessed."""

    name: str  # "copy", "triad", "read", "matvec", "matmul"
    device: str
    dtype: str
    shape: str
    bytes_moved: int
    flops: int
    timing: Timing | None = None
    skipped: str | None = None

    @property
    def seconds(self) -> float | None:
        return self.timing.median_s if self.timing else None

    @property
    def gb_per_s(self) -> float | None:
        return self.bytes_moved / self.seconds / 1e9 if self.timing else None

    @property
    def gflop_per_s(self) -> float | None:
        return self.flops / self.seconds / 1e9 if self.timing and self.flops else None

    def to_dict(self) -> dict:
        t = self.timing
        return {"probe": self.name, "device": self.device, "dtype": self.dtype, "shape": self.shape,
                "bytes": self.bytes_moved, "flops": self.flops, "median_ms": t.median_s * 1e3 if t else None,
                "min_ms": t.min_s * 1e3 if t else None, "max_ms": t.max_s * 1e3 if t else None,
                "GB/s": self.gb_per_s, "GFLOP/s": self.gflop_per_s, "skipped": self.skipped}


def device_skip_reason(device: str) -> str | None:
    """Why probes cannot run on `device` here, or None when they can."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        return "CUDA not available (no NVIDIA GPU, or a CPU-only torch build)"
    return None


def _timed(fn, repeats: int, device: str, min_time_s: float, warmup: int = 2) -> Timing:
    """time_callable with at least `repeats` repeats, more for a fast kernel so the timed calls add up to
    `min_time_s` (a median of 3 calls of 10 ms is at the mercy of one hiccup); 100 at most."""
    probe = time_callable(fn, warmup=1, repeats=1, device=device)
    n = max(repeats, min(100, math.ceil(min_time_s / max(probe.min_s, 1e-6))))
    return time_callable(fn, warmup=warmup, repeats=n, device=device)


def probe_bandwidth(mib: int = 256, device: str = "cpu", repeats: int = 5, min_time_s: float = 0.3) -> list[Probe]:
    """Streaming memory bandwidth on all cores through torch, STREAM-style, on fp32 arrays of `mib` MiB
    (use several times the last-level cache so the caches cannot serve it).

    read:  src.sum()             bytes = N (what decode mostly does: stream the weights once)
    copy:  dst.copy_(src)        bytes = 2N (read + write)
    triad: a = b + 3 * c         bytes = 3N (two reads + one write)
    Write-allocate traffic is not counted, as in STREAM, so the rates are what a program can rely on."""
    n = mib * MiB // 4
    shape = f"{mib} MiB fp32 x{{}}"
    reason = device_skip_reason(device)
    if reason:
        return [Probe(k, device, "fp32", shape.format(c), c * n * 4, 0, skipped=reason)
                for k, c in (("read", 1), ("copy", 2), ("triad", 3))]
    a = torch.empty(n, dtype=torch.float32, device=device)
    b = torch.rand(n, dtype=torch.float32, device=device)
    c = torch.rand(n, dtype=torch.float32, device=device)
    return [
        Probe("read", device, "fp32", shape.format(1), n * 4, n,
              _timed(lambda: b.sum(), repeats, device, min_time_s)),
        Probe("copy", device, "fp32", shape.format(2), 2 * n * 4, 0,
              _timed(lambda: a.copy_(b), repeats, device, min_time_s)),
        Probe("triad", device, "fp32", shape.format(3), 3 * n * 4, 2 * n,
              _timed(lambda: torch.add(b, c, alpha=3.0, out=a), repeats, device, min_time_s)),
    ]


def _rand(shape: tuple[int, ...], dtype: str, device: str, g: torch.Generator) -> torch.Tensor:
    if dtype == "int8":
        return torch.randint(-127, 128, shape, generator=g, dtype=torch.int8).to(device)
    return (torch.randn(shape, generator=g) * 0.02).to(device=device, dtype=TORCH_DTYPES[dtype])


# INT8 methods whose matmul is not the device's int8 kernel (onednn.int8_kernel): the case study times the kernel
# its INT8 stage calls (issue 29: on an AVX2-only EPYC torch._int_mm ran at 5.6 GFLOP/s, fbgemm's dynamic int8
# linear, which int8-dynamic-legacy calls, at well over 100)
METHOD_KERNELS = {"int8-dynamic-legacy": FBGEMM, "int8-dynamic": "torch._int_mm",
                  "int8-dynamic-onednn": "oneDNN int8 linear"}


def _matrix_step(dtype: str, m: int, k: int, n: int, device: str, copies: int, seed: int, onednn: bool,
                 kernel: str | None = None):
    """A zero-argument call that multiplies m x k activations by `copies` n x k weights in `dtype`."""
    g = torch.Generator().manual_seed(seed)
    if kernel == FBGEMM:  # fp32 activations quantized per call, as the path does
        x = _rand((m, k), "fp32", device, g)
        with warnings.catch_warnings():  # quantized tensors are deprecated; the path the lesson times uses them
            warnings.simplefilter("ignore")
            packed = [torch.ops.quantized.linear_prepack(torch.quantize_per_tensor(
                _rand((n, k), "fp32", device, g), 0.02 / 127, 0, torch.qint8), None) for _ in range(copies)]

        def step():
            for w in packed:
                torch.ops.quantized.linear_dynamic(x, w, True)
        return step
    x = _rand((m, k), dtype, device, g)
    ws = [_rand((n, k), dtype, device, g) for _ in range(copies)]
    if onednn:
        packed = [torch.ops.onednn.qlinear_prepack(w, None) for w in ws]
        scale, zeros = torch.ones(n), torch.zeros(n, dtype=torch.int64)

        def step():
            for w in packed:
                torch.ops.onednn.qlinear_pointwise(x, 1.0, 0, w, scale, zeros, None, 1.0, 0, torch.float32, "none",
                                                   [], "")
    elif dtype == "int8":
        def step():
            for w in ws:
                torch._int_mm(x, w.t())
    else:
        def step():
            for w in ws:
                torch.nn.functional.linear(x, w)
    return step


def matrix_kernel(dtype: str, tokens: int, k: int, n: int, device: str = "cpu", seed: int = 0, repeats: int = 3,
                  method: str | None = None):
    """(call, flops, kernel): `call()` runs `probe_matrix`'s kernel for a `tokens` x k by (n x k)^T product
    `repeats` times and returns {"kernel_s": the fastest}, for callers that time it next to other work (the case
    study runs it in the same rounds as its stages, so the ceiling it asserts against is the machine's at that
    moment; the fastest of a few, since a floor is the best the machine does). `kernel` names what runs; an int8
    `method` whose matmul is another kernel (METHOD_KERNELS) has that kernel timed instead."""
    if dtype not in PROBE_DTYPES:
        raise ValueError(f"unknown probe dtype {dtype!r}; choose one of {list(PROBE_DTYPES)}")
    kernel = (METHOD_KERNELS.get(method) or int8_kernel(device)) if dtype == "int8" else f"{dtype} F.linear"
    step = _matrix_step(dtype, tokens, k, n, device, 1, seed, kernel == "oneDNN int8 linear", kernel)

    def call() -> dict:
        best = float("inf")
        with torch.inference_mode():
            for _ in range(repeats):
                t0 = time.perf_counter()
                step()
                if str(device).startswith("cuda"):
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
        return {"kernel_s": best}
    return call, 2 * tokens * k * n, kernel


def probe_matrix(dtype: str, tokens: int, k: int, n: int, device: str = "cpu", repeats: int = 3,
                 min_weight_mib: int = 0, seed: int = 0, min_time_s: float = 0.3) -> Probe:
    """Throughput of `tokens` x k activations times an n x k weight, as nn.Linear does it (F.linear);
    int8 x int8 through the fastest int8 kernel labkit's INT8 paths call here: on an x86 CPU with oneDNN its
    prepacked int8 linear (what "int8-dynamic-onednn" calls; AMX or VNNI where present), on a CPU where oneDNN's
    is refused fbgemm's dynamic int8 linear (what "int8-dynamic-legacy" calls), elsewhere torch._int_mm
    (torchao's int8-dynamic); onednn.int8_kernel decides. The probe's `shape` names the kernel.

    tokens=1 is one decode step (matrix-vector: memory-bound, read it as GB/s); tokens=512 is a prefill
    (matrix-matrix: compute-bound, read it as GFLOP/s). Fast kernels get more repeats (see `_timed`).
    With `min_weight_mib`, the probe cycles through
    enough distinct weights to stream that many MiB per call, so the caches cannot hold them, as in a
    real decode step that reads every layer once."""
    if dtype not in PROBE_DTYPES:
        raise ValueError(f"unknown probe dtype {dtype!r}; choose one of {list(PROBE_DTYPES)}")
    name = "matvec" if tokens == 1 else "matmul"
    m = tokens
    if dtype == "int8" and str(device).startswith("cuda") and m <= 16:
        m = 32  # torch._int_mm on CUDA needs more than 16 rows; the time of 32 rows ~ 1 row when memory-bound
    elt = 1 if dtype == "int8" else TORCH_DTYPES[dtype].itemsize
    copies = max(1, -(-min_weight_mib * MiB // (n * k * elt))) if min_weight_mib else 1
    kernel = int8_kernel(device) if dtype == "int8" else None
    onednn = kernel == "oneDNN int8 linear"
    shape = (f"{m}x{k} @ ({n}x{k})^T" + (f" x{copies} weights" if copies > 1 else "")
             + (f" ({kernel})" if kernel else ""))
    out_elt = 4 if dtype == "int8" else elt
    in_elt = 4 if kernel == FBGEMM else elt  # fbgemm's dynamic linear takes fp32 activations, quantized inside
    nbytes = copies * (n * k * elt + m * k * in_elt + m * n * out_elt)
    flops = copies * 2 * m * k * n
    reason = device_skip_reason(device)
    if reason:
        return Probe(name, device, dtype, shape, nbytes, flops, skipped=reason)
    step = _matrix_step(dtype, m, k, n, device, copies, seed, onednn, kernel)
    try:
        with torch.inference_mode():
            timing = _timed(step, repeats, device, min_time_s, warmup=1)
    except RuntimeError as e:  # a dtype this build or device has no kernel for
        return Probe(name, device, dtype, shape, nbytes, flops, skipped=f"{type(e).__name__}: {e}"[:200])
    return Probe(name, device, dtype, shape, nbytes, flops, timing)


def spin_up(device: str = "cpu", seconds: float = 0.5, mib: int = 64) -> None:
    """Keep every core busy streaming memory for `seconds`, untimed, before the first probe: an idle CPU
    (or GPU) takes a moment to reach its working clocks, and the first probe of a run otherwise reads low."""
    if device_skip_reason(device):
        return
    x = torch.ones(mib * MiB // 4, device=device)
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        x.sum()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_probes(devices: tuple[str, ...] = ("cpu", "cuda"), bandwidth_mib: int = 256, k: int = 4096,
               n: int = 11008, prefill_tokens: int = 512, dtypes: tuple[str, ...] = PROBE_DTYPES,
               repeats: int = 3, progress: bool = True, min_time_s: float = 0.3) -> list[Probe]:
    """Every probe on every device: bandwidth, then matvec and matmul for each dtype. A device that is
    absent gives skipped probes with the reason. The matvec streams at least `bandwidth_mib` of weights."""
    from labkit.core.progress import tqdm

    jobs = []
    for dev in devices:
        jobs.append(("bandwidth", dev, None, 0))
        jobs += [("matrix", dev, dt, t) for dt in dtypes for t in (1, prefill_tokens)]
    out: list[Probe] = []
    for kind, dev, dt, t in tqdm(jobs, desc="probes", disable=not progress):
        if kind == "bandwidth":
            spin_up(dev)
            out += probe_bandwidth(bandwidth_mib, dev, repeats=max(repeats, 5), min_time_s=min_time_s)
        else:
            out.append(probe_matrix(dt, t, k, n, dev, repeats=repeats, min_time_s=min_time_s,
                                    min_weight_mib=bandwidth_mib if t == 1 else 0))
    return out


AGREEMENT_BAR = 0.15  # two runs of a probe within +-15% of each other: the course trusts the probe


def probe_agreement(first: list[Probe], second: list[Probe], bar: float = AGREEMENT_BAR) -> list[dict]:
    """Two runs of the same probes side by side: the second's rate over the first's (1.0 = identical).
    The course's bar for a trustworthy probe is agreement within +-`bar` (15%)."""
    if len(first) != len(second):
        raise ValueError("probe lists differ in length; run the same probes twice")
    rows = []
    for a, b in zip(first, second, strict=True):
        if (a.name, a.device, a.dtype, a.shape) != (b.name, b.device, b.dtype, b.shape):
            raise ValueError("probe lists differ; run the same probes twice")
        if a.skipped or b.skipped:
            continue
        ra, rb = (a.gflop_per_s, b.gflop_per_s) if a.name == "matmul" else (a.gb_per_s, b.gb_per_s)
        rows.append({"probe": a.name, "device": a.device, "dtype": a.dtype, "run 1": ra, "run 2": rb,
                     "ratio": rb / ra, f"within {bar:.0%}": abs(rb / ra - 1) <= bar})
    return rows


@dataclass
class ProbeRuns:
    """Runs of the same probes until the last two agreed within the bar (or `max_runs` ran out).
    `reliable` is False when they never did: a neighbour was busy, and the rates are not the machine's."""

    runs: list[list[Probe]]
    agreement: list[dict]  # the last two runs, probe by probe
    bar: float
    load: dict | None = None  # others' share of the CPU over all the runs (labkit.core.load.LoadWatch)

    @property
    def max_deviation(self) -> float:
        return max((abs(r["ratio"] - 1) for r in self.agreement), default=0.0)

    @property
    def reliable(self) -> bool:
        return self.max_deviation <= self.bar

    @property
    def first(self) -> list[Probe]:
        return self.runs[0]

    def all(self) -> list[Probe]:
        return [p for run in self.runs for p in run]

    def best(self) -> list[Probe]:
        """Each probe's fastest run (the rate `summarize_probes` keeps), in the runs' order: the table to show."""
        def rate(p: Probe) -> float:
            return -1.0 if p.skipped else (p.gflop_per_s if p.name == "matmul" else p.gb_per_s) or -1.0
        return [max(same, key=rate) for same in zip(*self.runs, strict=True)]

    def words(self) -> str:
        """One sentence for the learner: how many runs it took and whether the profile can be trusted."""
        n, dev = len(self.runs), self.max_deviation
        if self.reliable:
            return (f"the last two of {n} probe runs agree within {dev:.1%} (the bar: {self.bar:.0%}): the profile "
                    "is stored as reliable")
        worst = max(self.agreement, key=lambda r: abs(r["ratio"] - 1))
        return (f"UNRELIABLE: after {n} runs the last two still differ by up to {dev:.1%} (the bar: {self.bar:.0%}; "
                f"worst: {worst['probe']} {worst['dtype'] or ''} on {worst['device']}): "
                f"{unreliable_cause((self.load or {}).get('others_cpu_share'))}. The profile is stored marked "
                "unreliable, and later lessons say so next to each floor.")


def unreliable_cause(others_share: float | None) -> str:
    """Why probe runs disagreed, from others' share of the CPU while they ran: other processes here (rerun on a
    quiet machine), or, with the CPU otherwise idle, something this machine cannot see (seen on a 2-core cloud VM
    whose memory-bandwidth probes moved 47-100% between runs with others at 1% of the CPU)."""
    from labkit.core.load import LoadWatch

    if others_share is None:
        return "something else was using the machine; rerun notebook 01 on a quiet machine"
    if others_share > LoadWatch.BUSY_ABOVE:
        return f"other processes used {others_share:.0%} of the CPU meanwhile; rerun notebook 01 on a quiet machine"
    return (f"other processes here used only {others_share:.0%} of the CPU meanwhile, so the variation came from "
            "outside what this machine sees (a neighbour on the same host's memory bus, or the CPU's clock): a rerun "
            "may not help; ratios measured side by side still hold")


def run_until_agree(max_runs: int = 3, bar: float = AGREEMENT_BAR, run=None, **kw) -> ProbeRuns:
    """`run_probes(**kw)` twice, then again while the last two runs disagree by more than `bar` on any probe,
    at most `max_runs` runs in all (a neighbour's burst passes; a busy machine stays unreliable and is said to
    be). `run`: the function that runs the probes once (tests pass a fake neighbour)."""
    if max_runs < 2:
        raise ValueError(f"max_runs must be at least 2 (two runs are compared), got {max_runs}")
    from labkit.core.load import LoadWatch

    run = run or run_probes
    with LoadWatch() as watch:
        runs = [run(**kw), run(**kw)]
        agreement = probe_agreement(runs[-2], runs[-1], bar)
        while len(runs) < max_runs and any(abs(r["ratio"] - 1) > bar for r in agreement):
            runs.append(run(**kw))
            agreement = probe_agreement(runs[-2], runs[-1], bar)
    return ProbeRuns(runs, agreement, bar, watch.result)


def summarize_probes(probes: list[Probe]) -> dict:
    """The rates later lessons need, per device: best streaming bandwidth (the fastest of read/copy/triad and the
    matrix-vector probes, GB/s; `best_probe` names it),
    matrix-vector GB/s and matrix-matrix GFLOP/s per dtype. Of repeated probes (several runs) the fastest
    counts: a rate is the best the machine did, never an average pulled down by a neighbour's burst, so no
    measured speed later beats the floor made from it."""
    acc: dict = {}
    for p in probes:
        if p.skipped:
            continue
        rate = p.gflop_per_s if p.name == "matmul" else p.gb_per_s
        acc.setdefault(p.device, {}).setdefault((p.name, p.dtype), []).append(rate)
    out = {}
    for dev, d in acc.items():
        best_of = {key: max(v) for key, v in d.items()}
        bw = {name: best_of[(name, "fp32")] for name in ("read", "copy", "triad") if (name, "fp32") in best_of}
        # a good matrix-vector kernel streams its weights faster than a sum or a copy here (no writes, blocked
        # reads on every core): the floor of a decode step must not be slower than a kernel that was measured
        reads = {**bw, **{f"matvec {dt}": r for (name, dt), r in best_of.items() if name == "matvec"}}
        best = max(reads, key=reads.get) if reads else None
        out[dev] = {
            "bandwidth_gbps": {**bw, "best": reads[best], "best_probe": best} if bw else {},
            "matvec_gbps": {dt: r for (name, dt), r in best_of.items() if name == "matvec"},
            "matmul_gflops": {dt: r for (name, dt), r in best_of.items() if name == "matmul"},
        }
    skipped = sorted({f"{p.device}: {p.skipped}" for p in probes if p.skipped})
    if skipped:
        out["skipped"] = skipped
    return out


# ---------------------------------------------------------------- generation speed of a real model

def probe_generation(model, prompt_ids: torch.Tensor, new_tokens: int = 16, repeats: int = 3) -> dict:
    """Baseline speed of `model` with transformers `generate` (greedy, batch 1): prefill as the time of
    one forward over the prompt with the last token's logits only (what generate computes), decode as
    TPOT of a timed generation (vLLM's definition), each a median over `repeats` after a cold call."""
    if new_tokens < 2:
        raise ValueError("new_tokens must be >= 2: TPOT needs at least two output tokens")
    dev = next(model.parameters()).device
    ids = prompt_ids.to(dev)
    with torch.inference_mode():
        prefill = time_callable(lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1),
                                warmup=1, repeats=repeats, device=dev)
        cold, *warm = [generate_timed(model, ids, new_tokens)[0] for _ in range(repeats + 1)]
    return {"prompt_tokens": int(ids.shape[1]), "new_tokens": new_tokens, "prefill_s": prefill.median_s,
            "prefill_cold_s": prefill.cold_s, "ttft_s": statistics.median(r.ttft for r in warm),
            "tpot_s": statistics.median(r.tpot for r in warm), "tpot_cold_run_s": cold.tpot,
            "decode_context": int(ids.shape[1]) + new_tokens // 2}
