"""What this machine is: CPU, ISA features, matrix units, memory, GPUs, package versions.

`fingerprint()` is stored next to every result: an absolute time means nothing without it. What the machine can
*do* is measured elsewhere: labkit.core.probes (bandwidth, matrix rates per dtype, a model's speed),
labkit.core.storage (disk and model loading), labkit.core.onednn (which x86 oneDNN kernels run here).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from functools import lru_cache
from pathlib import Path

import torch

# Moved to their own modules, importable from here for the callers that still use them: onednn_* (techniques.kernels,
# lessons.casestudy, tests/test_casestudy.py), matrix_kernel (lessons.casestudy), Probe / run_probes /
# summarize_probes (core.roofline, core.planner). New code imports them from where they live.
from labkit.core.onednn import onednn_op_unsupported, onednn_unsupported  # noqa: F401
from labkit.core.probes import Probe, matrix_kernel, run_probes, summarize_probes  # noqa: F401
from labkit.core.units import gib

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
        f"Memory  {gib(fp['memory_bytes']):.1f} GiB",
    ]
    if fp["gpus"]:
        for g in fp["gpus"]:
            lines.append(f"GPU     {g['name']}, {gib(g['memory_bytes']):.1f} GiB, compute {g['compute_capability']}")
    else:
        lines.append("GPU     none (CUDA not available)")
    v = fp["versions"]
    lines.append("Versions " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + f", python {fp['python']}")
    return "\n".join(lines)

