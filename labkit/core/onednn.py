"""Whether PyTorch's x86 oneDNN operators can run here, and if not, why in words.

Quantization's "int8-dynamic-onednn", the kernels lesson's prepacked fp32 linear and the int8 matrix probe all
call `torch.ops.onednn` kernels that exist only on x86 CPUs with a oneDNN-enabled PyTorch build. One check, asked
before trying, gives every caller the same reason to print in a "skipped: <reason>" row.
"""

from __future__ import annotations

import functools
import platform
import time

import torch

# oneDNN's int8 linear is only worth calling where it has an optimized kernel for this CPU. On a 2-core AMD EPYC
# with AVX-512 VNNI (PyTorch 2.13, oneDNN 3.12) it ran 0.09 GFLOP/s at every shape, 1-512 rows, against fp32
# F.linear's 3-77 GFLOP/s and torch._int_mm's 179 at 512 rows: its reference code, 800x slower than fp32 for a
# prefill (90 s for one 512 x 2048 x 4096 call). A path that slow is not "int8 on this machine" but a fallback,
# so it is refused with the measurement, and the INT8 paths take torch._int_mm instead.
SLOWER_THAN_FP32 = 2.0  # refuse oneDNN's int8 linear when it runs this many times slower than fp32 F.linear
# On a 2-core AMD EPYC of the Zen 3 kind (AVX2, no VNNI; the same build) its results were off: the per-token W8A8
# formula held to 17% instead of fp32 rounding, and quantized logits moved 0.085 from fp32. A kernel that computes
# something else is refused too, measured on integer inputs whose exact product fp32 holds.
WRONG_ABOVE = 1e-4  # the largest error, relative to the largest exact product, still counted as rounding


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
    err = int8_error()
    if err > WRONG_ABOVE:
        return (f"oneDNN's int8 linear gives wrong results on this CPU in this build: on exact integer inputs its "
                f"products are up to {err:.1%} off the integer matmul (without VNNI, AVX2 sums pairs of 8-bit "
                "products in saturating 16-bit arithmetic), so the INT8 paths use fbgemm's int8 linear "
                "(int8-dynamic-legacy) and torch._int_mm (torchao's int8-dynamic) here")
    int8, fp32 = int8_speed()
    if int8 * SLOWER_THAN_FP32 < fp32:
        return (f"oneDNN's int8 linear has no fast kernel for this CPU in this build: measured {int8:,.2f} GFLOP/s "
                f"against fp32 F.linear's {fp32:,.1f} at the same shape ({fp32 / int8:,.0f}x slower), so the INT8 "
                "paths use fbgemm's int8 linear (int8-dynamic-legacy) and torch._int_mm (torchao's int8-dynamic) "
                "here")
    return None


@functools.lru_cache(maxsize=1)
def int8_error(m: int = 16, k: int = 512, n: int = 64) -> float:
    """The largest error of oneDNN's int8 linear against the exact integer matmul (int8 inputs in [-100, 100):
    every sum fits fp32 exactly), relative to the largest exact value. Measured once a process."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-100, 100, (m, k), dtype=torch.int8, generator=g)
    w = torch.randint(-100, 100, (n, k), dtype=torch.int8, generator=g)
    packed = torch.ops.onednn.qlinear_prepack(w, None)
    scale, zeros = torch.ones(n), torch.zeros(n, dtype=torch.int64)
    with torch.inference_mode():
        got = torch.ops.onednn.qlinear_pointwise(x, 1.0, 0, packed, scale, zeros, None, 1.0, 0, torch.float32,
                                                 "none", [], "")
    exact = x.double() @ w.double().T
    return float((got.double() - exact).abs().max() / exact.abs().max())


@functools.lru_cache(maxsize=1)
def int8_speed(m: int = 64, k: int = 512, n: int = 512) -> tuple[float, float]:
    """(oneDNN int8 linear, fp32 F.linear) GFLOP/s at one small prefill-like shape, the fastest of three calls
    each after a warm-up: enough to tell an optimized kernel (several times fp32's rate with VNNI or AMX) from a
    reference fallback (hundreds of times slower), in well under a second either way. Measured once a process."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-100, 100, (m, k), dtype=torch.int8, generator=g)
    w = torch.randint(-100, 100, (n, k), dtype=torch.int8, generator=g)
    packed = torch.ops.onednn.qlinear_prepack(w, None)
    scale, zeros = torch.ones(n), torch.zeros(n, dtype=torch.int64)
    xf, wf = x.float(), w.float()

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return 2 * m * k * n / min(times) / 1e9

    with torch.inference_mode():
        int8 = best(lambda: torch.ops.onednn.qlinear_pointwise(x, 1.0, 0, packed, scale, zeros, None, 1.0, 0,
                                                               torch.float32, "none", [], ""))
        fp32 = best(lambda: torch.nn.functional.linear(xf, wf))
    return int8, fp32


FBGEMM = "fbgemm dynamic int8 linear"  # what int8-dynamic-legacy (torch.ao's quantize_dynamic) calls on a CPU


def int8_kernel(device: str) -> str:
    """The fastest int8 matmul the course's INT8 paths call on `device`: oneDNN's on x86 CPUs where it is not
    refused (onednn_unsupported), else fbgemm's dynamic int8 linear where this build has it (issue 29: on an
    AVX2-only EPYC, where oneDNN was refused, it ran at ~240 GFLOP/s and torch._int_mm at 5.6), else
    torch._int_mm."""
    if str(device).startswith("cuda"):
        return "torch._int_mm"
    if onednn_unsupported("cpu") is None:
        return "oneDNN int8 linear"
    return FBGEMM if "fbgemm" in torch.backends.quantized.supported_engines else "torch._int_mm"
