"""Whether PyTorch's x86 oneDNN operators can run here, and if not, why in words.

Quantization's "int8-dynamic-onednn", the kernels lesson's prepacked fp32 linear and the int8 matrix probe all
call `torch.ops.onednn` kernels that exist only on x86 CPUs with a oneDNN-enabled PyTorch build. One check, asked
before trying, gives every caller the same reason to print in a "skipped: <reason>" row.
"""

from __future__ import annotations

import platform

import torch


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


def int8_kernel(device: str) -> str:
    """The int8 matmul the course's INT8 paths call on `device`: oneDNN's on x86 CPUs, else torch._int_mm."""
    cpu = not str(device).startswith("cuda")
    return "oneDNN int8 linear" if cpu and onednn_unsupported("cpu") is None else "torch._int_mm"
