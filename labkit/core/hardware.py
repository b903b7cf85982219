"""What this machine is, and what it can do for LLM inference.

`fingerprint()` is stored next to every result: an absolute time means nothing without it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from labkit.core.bench import Timing, time_callable

# ISA features that decide CPU LLM speed, as Linux /proc/cpuinfo names them.
ISA_FLAGS = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx_vnni": "avx_vnni",
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
    "amx_fp16": "amx_fp16",
}
TRACKED_PACKAGES = ("torch", "transformers", "torchao", "bitsandbytes", "tokenizers", "safetensors",
                    "numpy", "gptqmodel", "flash-attn")


def _cpuinfo() -> str:
    p = Path("/proc/cpuinfo")
    return p.read_text() if p.exists() else ""


@lru_cache(maxsize=1)
def cpu_features() -> dict[str, bool]:
    """Which of ISA_FLAGS the CPU reports. On non-Linux systems, falls back to what PyTorch detected."""
    info = _cpuinfo()
    m = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", info, re.M)
    if m:
        flags = set(m.group(1).split())
        feats = {k: v in flags for k, v in ISA_FLAGS.items()}
        feats["neon"] = "asimd" in flags or "neon" in flags
        return feats
    cap = torch.backends.cpu.get_cpu_capability()  # e.g. "AVX512", "AVX2", "DEFAULT"
    feats = {k: False for k in ISA_FLAGS}
    feats["avx2"] = cap in ("AVX2", "AVX512")
    feats["avx512f"] = cap == "AVX512"
    feats["neon"] = platform.machine().lower() in ("arm64", "aarch64")
    return feats


def cpu_model() -> str:
    m = re.search(r"^model name\s*:\s*(.*)$", _cpuinfo(), re.M)
    return m.group(1).strip() if m else (platform.processor() or platform.machine())


def memory_bytes() -> dict[str, int]:
    import psutil

    vm = psutil.virtual_memory()
    return {"total": int(vm.total), "available": int(vm.available)}


def gpu_info() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"name": p.name, "memory_bytes": int(p.total_memory),
                    "compute_capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count})
    return out


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def matrix_units() -> dict[str, bool]:
    """Whether low-precision matrix hardware is present: what decides if bf16/int8 pays off."""
    f = cpu_features()
    cuda = torch.cuda.is_available()
    return {
        "bf16": bool(f.get("amx_bf16") or f.get("avx512_bf16") or cuda),
        "int8": bool(f.get("amx_int8") or f.get("avx512_vnni") or f.get("avx_vnni") or cuda),
    }


def fingerprint() -> dict:
    """The machine and software an absolute number was measured on."""
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa": cpu_features(),
        "matrix_units": matrix_units(),
        "memory_bytes": memory_bytes()["total"],
        "gpus": gpu_info(),
        "python": platform.python_version(),
        "versions": package_versions(),
    }


def describe(fp: dict | None = None) -> str:
    """A few human lines for a fingerprint."""
    fp = fp or fingerprint()
    isa = ", ".join(k for k, v in fp["isa"].items() if v) or "none detected"
    lines = [
        f"CPU     {fp['cpu']} ({fp['machine']}), {fp['usable_cores']} usable cores, "
        f"torch threads {fp['torch_threads']}",
        f"ISA     {isa}  (torch kernels: {fp['torch_cpu_capability']})",
        f"Matrix  bf16 units: {'yes' if fp['matrix_units']['bf16'] else 'no'}, "
        f"int8 units: {'yes' if fp['matrix_units']['int8'] else 'no'}",
        f"Memory  {fp['memory_bytes'] / 2**30:.1f} GiB",
    ]
    if fp["gpus"]:
        for g in fp["gpus"]:
            lines.append(f"GPU     {g['name']}, {g['memory_bytes'] / 2**30:.1f} GiB, compute {g['compute_capability']}")
    else:
        lines.append("GPU     none (CUDA not available)")
    v = fp["versions"]
    lines.append("Versions " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + f", python {fp['python']}")
    return "\n".join(lines)


# ================================================================ probes: what this machine can do
# Measured, never looked up: memory bandwidth, matrix throughput per dtype at LLM shapes, disk and model
# load speed, and the baseline model's decode and prefill. Datasheet numbers live in labkit.core.roofline.

PROBE_DTYPES = ("fp32", "bf16", "fp16", "int8")
_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}
MiB = 2**20


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
    import math

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
    return (torch.randn(shape, generator=g) * 0.02).to(device=device, dtype=_TORCH_DTYPES[dtype])


def _matrix_step(dtype: str, m: int, k: int, n: int, device: str, copies: int, seed: int, onednn: bool):
    """A zero-argument call that multiplies m x k activations by `copies` n x k weights in `dtype`."""
    g = torch.Generator().manual_seed(seed)
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


def matrix_kernel(dtype: str, tokens: int, k: int, n: int, device: str = "cpu", seed: int = 0, repeats: int = 3):
    """(call, flops, kernel): `call()` runs `probe_matrix`'s kernel for a `tokens` x k by (n x k)^T product
    `repeats` times and returns {"kernel_s": the fastest}, for callers that time it next to other work (the case
    study runs it in the same rounds as its stages, so the ceiling it asserts against is the machine's at that
    moment; the fastest of a few, since a floor is the best the machine does). `kernel` names what runs."""
    if dtype not in PROBE_DTYPES:
        raise ValueError(f"unknown probe dtype {dtype!r}; choose one of {list(PROBE_DTYPES)}")
    kernel = _int8_kernel(device) if dtype == "int8" else f"{dtype} F.linear"
    step = _matrix_step(dtype, tokens, k, n, device, 1, seed, kernel == "oneDNN int8 linear")

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
    prepacked int8 linear (what "int8-dynamic-onednn" calls; AMX or VNNI where present), elsewhere
    torch._int_mm (torchao's int8-dynamic). The probe's `shape` names the kernel.

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
    elt = 1 if dtype == "int8" else _TORCH_DTYPES[dtype].itemsize
    copies = max(1, -(-min_weight_mib * MiB // (n * k * elt))) if min_weight_mib else 1
    kernel = _int8_kernel(device) if dtype == "int8" else None
    onednn = kernel == "oneDNN int8 linear"
    shape = (f"{m}x{k} @ ({n}x{k})^T" + (f" x{copies} weights" if copies > 1 else "")
             + (f" ({kernel})" if kernel else ""))
    out_elt = 4 if dtype == "int8" else elt
    nbytes = copies * (n * k * elt + m * k * elt + m * n * out_elt)
    flops = copies * 2 * m * k * n
    reason = device_skip_reason(device)
    if reason:
        return Probe(name, device, dtype, shape, nbytes, flops, skipped=reason)
    step = _matrix_step(dtype, m, k, n, device, copies, seed, onednn)
    try:
        with torch.inference_mode():
            timing = _timed(step, repeats, device, min_time_s, warmup=1)
    except RuntimeError as e:  # a dtype this build or device has no kernel for
        return Probe(name, device, dtype, shape, nbytes, flops, skipped=f"{type(e).__name__}: {e}"[:200])
    return Probe(name, device, dtype, shape, nbytes, flops, timing)


def onednn_op_unsupported(what: str, op: str, device: str = "cpu") -> str | None:
    """Why PyTorch's x86 oneDNN operator `op` (e.g. "onednn.qlinear_pointwise"), `what` in words, cannot run on
    `device` here, or None."""
    if str(device).split(":")[0] != "cpu":
        return f"{what} (torch.ops.{op}) runs on x86 CPUs, not {device}"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"{what} is PyTorch's x86 path; this CPU is {platform.machine()}"
    space, _, name = op.partition(".")
    if not torch.backends.mkldnn.is_available() or not hasattr(getattr(torch.ops, space), name):
        return f"this PyTorch build has no {what} (torch.ops.{op})"
    return None


def onednn_unsupported(device: str = "cpu", dtype: torch.dtype = torch.float32) -> str | None:
    """Why oneDNN's int8 linear (torch.ops.onednn.qlinear_pointwise, what quant's "int8-dynamic-onednn"
    calls) cannot run here for activations in `dtype`, or None."""
    reason = onednn_op_unsupported("oneDNN's int8 linear", "onednn.qlinear_pointwise", device)
    if reason:
        return reason
    if dtype not in (torch.float32, torch.bfloat16):
        return f"labkit's oneDNN int8 linear takes fp32 or bf16 activations, got {dtype}"
    return None


def _int8_kernel(device: str) -> str:
    """The int8 matmul the course's INT8 paths call on `device`: oneDNN's on x86 CPUs, else torch._int_mm."""
    cpu = not str(device).startswith("cuda")
    return "oneDNN int8 linear" if cpu and onednn_unsupported("cpu") is None else "torch._int_mm"


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


def probe_agreement(first: list[Probe], second: list[Probe]) -> list[dict]:
    """Two runs of the same probes side by side: the second's rate over the first's (1.0 = identical).
    The course's bar for a trustworthy probe is agreement within +-15%."""
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
                     "ratio": rb / ra, "within 15%": abs(rb / ra - 1) <= 0.15})
    return rows


def summarize_probes(probes: list[Probe]) -> dict:
    """The rates later lessons need, per device: best streaming bandwidth (the fastest of read/copy/triad and the
    matrix-vector probes, GB/s; `best_probe` names it),
    matrix-vector GB/s and matrix-matrix GFLOP/s per dtype. Repeated probes (two runs) are averaged."""
    acc: dict = {}
    for p in probes:
        if p.skipped:
            continue
        rate = p.gflop_per_s if p.name == "matmul" else p.gb_per_s
        acc.setdefault(p.device, {}).setdefault((p.name, p.dtype), []).append(rate)
    out = {}
    for dev, d in acc.items():
        mean = {key: sum(v) / len(v) for key, v in d.items()}
        bw = {name: mean[(name, "fp32")] for name in ("read", "copy", "triad") if (name, "fp32") in mean}
        # a good matrix-vector kernel streams its weights faster than a sum or a copy here (no writes, blocked
        # reads on every core): the floor of a decode step must not be slower than a kernel that was measured
        reads = {**bw, **{f"matvec {dt}": r for (name, dt), r in mean.items() if name == "matvec"}}
        best = max(reads, key=reads.get) if reads else None
        out[dev] = {
            "bandwidth_gbps": {**bw, "best": reads[best], "best_probe": best} if bw else {},
            "matvec_gbps": {dt: r for (name, dt), r in mean.items() if name == "matvec"},
            "matmul_gflops": {dt: r for (name, dt), r in mean.items() if name == "matmul"},
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
    import statistics

    from labkit.core.bench import generate_timed

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


# ---------------------------------------------------------------- storage: disk and model loading (claim C4)

def _evict(path: Path) -> bool:
    """Ask the kernel to drop `path` from the page cache (no root needed for clean pages), so the next read
    comes from the disk. False where the OS has no posix_fadvise. Under a VM the host may still cache it."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def _read_all(path: Path, chunk: int = 16 * MiB) -> int:
    buf = bytearray(chunk)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while (got := f.readinto(buf)) > 0:
            total += got
    return total


def probe_disk(folder: Path, mib: int = 256, repeats: int = 3) -> dict:
    """Write a `mib` MiB file of random bytes in `folder` (fsync'd), read it back after evicting it from the
    page cache (cold: the disk) and again from the page cache (warm: memory). The file is deleted after."""
    import tempfile

    folder = Path(folder)
    block = os.urandom(MiB)
    fd, name = tempfile.mkstemp(dir=folder, prefix=".labkit-disk-probe-")
    path = Path(name)
    try:
        t0 = time.perf_counter()
        with os.fdopen(fd, "wb") as f:
            for _ in range(mib):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        write_s = time.perf_counter() - t0
        cold = []
        for _ in range(repeats):
            evicted = _evict(path)
            t0 = time.perf_counter()
            _read_all(path)
            cold.append(time.perf_counter() - t0)
        warm = time_callable(lambda: _read_all(path), warmup=1, repeats=repeats)
    finally:
        path.unlink(missing_ok=True)
    nbytes = mib * MiB
    cold_s = float(np.median(cold))
    return {"folder": str(folder), "bytes": nbytes, "write_gbps": nbytes / write_s / 1e9,
            "cold_read_gbps": nbytes / cold_s / 1e9, "warm_read_gbps": nbytes / warm.median_s / 1e9,
            "evicted_with_fadvise": evicted}


LOAD_METHODS = ("mmap", "pread", "read")


def _proc_status_kib(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(m.group(1)) if m else 0


def _reset_peak_rss() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); ru_maxrss cannot be reset
    and, after fork + exec, still holds the parent's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # then VmHWM counts from process start: still a peak, only less tight


def _touch(tensors: dict) -> None:
    """Read one byte of every 4 KiB page of every tensor: a lazily mapped file is really loaded after this."""
    for t in tensors.values():
        flat = t.reshape(-1).view(torch.uint8) if t.numel() else t
        flat[::4096].sum()


def load_in_this_process(path: str, method: str, repeats: int = 3) -> dict:
    """Load a .safetensors file `repeats + 1` times with `method`, touching every page each time:
    the first after evicting the file from the page cache (cold, from disk), then warm. Memory growth is
    read from /proc: anonymous memory is a private copy of the weights, file-backed memory is the page
    cache mapped in place (shared, no copy); the peak is the RSS high-water mark above the start. Run it in a
    fresh process: see `probe_loading`."""
    import gc

    from safetensors.torch import load, load_file

    def do_load():
        if method == "mmap":
            return load_file(path)
        if method == "pread":
            return load_file(path, backend="pread")
        if method == "read":
            with open(path, "rb") as f:
                return load(f.read())
        raise ValueError(f"unknown load method {method!r}; choose one of {list(LOAD_METHODS)}")

    _reset_peak_rss()
    rss0, anon0, file0 = _proc_status_kib("VmRSS"), _proc_status_kib("RssAnon"), _proc_status_kib("RssFile")
    times = []
    for i in range(repeats + 1):
        if i == 0:
            _evict(Path(path))
        t0 = time.perf_counter()
        sd = do_load()
        _touch(sd)
        times.append(time.perf_counter() - t0)
        if i == 0:
            anon, filem = _proc_status_kib("RssAnon") - anon0, _proc_status_kib("RssFile") - file0
        del sd
        gc.collect()
    peak = _proc_status_kib("VmHWM") - rss0
    return {"method": method, "file_bytes": os.path.getsize(path), "first_s": times[0],
            "repeat_s": float(np.median(times[1:])), "anon_growth_bytes": anon * 1024,
            "file_mapped_bytes": filem * 1024, "peak_rss_growth_bytes": peak * 1024}


def probe_loading(path: Path, methods: tuple[str, ...] = LOAD_METHODS, repeats: int = 3) -> list[dict]:
    """Load time of a safetensors file per method, each in a fresh Python process so that peak memory and
    the cold first load are its own (claim C4). Bytes copied in user memory: mmap 0 (pages are mapped),
    pread 1 (file -> tensors), read 2 (file -> bytes object -> tensors)."""
    import json
    import subprocess
    import sys

    copies = {"mmap": 0, "pread": 1, "read": 2}
    out = []
    for method in methods:
        code = ("import json, sys; from labkit.core.hardware import load_in_this_process as f; "
                "print(json.dumps(f(sys.argv[1], sys.argv[2], int(sys.argv[3]))))")
        res = subprocess.run([sys.executable, "-c", code, str(path), method, str(repeats)], capture_output=True,
                             text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"loading {path} with {method} failed:\n{res.stderr[-2000:]}")
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["user_copies"] = copies[method]
        out.append(row)
    return out


def weights_file_for_loading(tmpdir: Path, fallback_shape: str = "tinyllama-1.1b", layers: int = 1) -> Path:
    """The embedded model's model.safetensors when it exists; otherwise a shape-faithful model's weights
    (seeded random, bf16) written to `tmpdir` with safetensors' save_file."""
    from labkit.core.models import EMBEDDED, MODELS_DIR, build

    embedded = MODELS_DIR / EMBEDDED / "model.safetensors"
    if embedded.exists():
        return embedded
    from safetensors.torch import save_file

    model = build(fallback_shape, layers=layers, dtype="bf16")
    path = Path(tmpdir) / f"{fallback_shape}-{layers}l.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def plot_probes(probes: list[Probe]):
    """Two panels: GB/s of the streaming and matrix-vector probes (decode's currency) and GFLOP/s of the
    matrix-matrix probes (prefill's), per device and dtype. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    done = [p for p in probes if not p.skipped]
    bw = [p for p in done if p.name != "matmul"]
    mm = [p for p in done if p.name == "matmul"]
    left.barh([f"{p.device} {p.name} {p.dtype}" for p in bw], [p.gb_per_s for p in bw], color="tab:blue")
    left.set_xlabel("GB/s (bytes read + written per second)")
    left.set_title("memory-bound: streaming and matrix-vector")
    right.barh([f"{p.device} {p.dtype}" for p in mm], [p.gflop_per_s for p in mm], color="tab:orange")
    right.set_xlabel("GFLOP/s (int8: GOP/s)")
    right.set_title(f"compute-bound: matrix-matrix ({mm[0].shape if mm else ''})", fontsize=9)
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
