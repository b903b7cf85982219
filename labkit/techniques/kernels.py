"""Attention behind one call, with the kernel that really runs made visible.

`attention(q, k, v, backend=...)` computes causal (or masked) attention with one of:
- "eager": matmul, softmax, matmul, written out (Hugging Face's "eager"): it materializes the n x n scores;
- "sdpa": `F.scaled_dot_product_attention`, letting PyTorch's dispatcher pick the kernel (`sdpa_choice` says
  which one it picks for these inputs);
- "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn": the same call with one backend forced through
  `torch.nn.attention.sdpa_kernel` (flash has a CPU kernel; memory-efficient and cuDNN are CUDA kernels);
- "flex": `flex_attention` under torch.compile (a fused kernel generated for the mask; CPU and CUDA);
- "flash-attn": the flash-attn package (FlashAttention-2, CUDA sm80+ only).
A backend this device or these inputs cannot run raises `KernelSkipped(reason)` (`unsupported` gives the reason
without running anything): never another kernel's result.

Shapes: q [batch, heads, n, head_dim]; k, v [batch, kv_heads, end, head_dim] with heads a multiple of kv_heads
(grouped-query attention). With end > n the queries are the last n positions: query i sees keys up to
end - n + i (causal aligned to the bottom right, as in decoding after a cached prefix).

`peak_estimate` predicts the memory an attention call allocates, so a length that cannot fit is refused
(`check_fits`, a planner.PlanError with the estimate) before it is attempted.

`prepack_linears(model)` swaps a kernel outside attention: every fp32 `nn.Linear` gets oneDNN's prepacked weight
(`PackedLinear`), which a serving step of a few rows needs on x86 CPUs (below).
"""

from __future__ import annotations

import importlib.util
import shutil
import warnings
from functools import lru_cache

import torch
from torch import nn
from torch.nn import functional as F

from labkit.core.hardware import onednn_op_unsupported
from labkit.core.models import swap
from labkit.core.planner import HEADROOM, PlanError

BACKENDS = ("eager", "sdpa", "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "flex", "flash-attn")
FUSED = ("sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "flex", "flash-attn")  # never hold the n x n scores
CUDA_ONLY = ("sdpa-efficient", "sdpa-cudnn", "flash-attn")


class KernelSkipped(RuntimeError):
    """This backend cannot run here (device, dtype, missing package); the message says why."""


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {list(BACKENDS)}")
    return backend


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
                    scale: float) -> torch.Tensor:
    """Attention written out: QK^T, mask, softmax in fp32, times V. q [b, heads, n, d]; k, v [b, kv_heads,
    end, d] (grouped-query heads are repeated); `mask` as SDPA takes it: bool (True: attend) or float (added to
    the scores). Materializes the n x end score matrix that SDPA's fused kernels avoid."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    if causal:  # query i (of the last n positions) sees keys up to end - n + i
        n, end = q.shape[2], k.shape[2]
        mask = torch.ones(n, end, dtype=torch.bool, device=q.device).tril(diagonal=end - n)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


# ---------------------------------------------------------------- which kernel runs, and why not

def _sdp_backend(backend: str):
    from torch.nn.attention import SDPBackend

    return {"sdpa-math": SDPBackend.MATH, "sdpa-flash": SDPBackend.FLASH_ATTENTION,
            "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}[backend]


_CHOICE_NAMES = {-1: "none", 0: "math", 1: "flash", 2: "memory-efficient", 3: "cudnn", 4: "overrideable"}


def sdpa_choice(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> str:
    """The kernel PyTorch's SDPA dispatcher picks for these inputs ("flash", "math", ...), asked without
    running attention (the same `_fused_sdp_choice` that `scaled_dot_product_attention` calls)."""
    gqa = q.shape[1] != k.shape[1]
    mask = None if not causal or q.shape[2] == k.shape[2] else _bottom_right(q.shape[2], k.shape[2], q.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # on CUDA the checks warn about every kernel they rule out
        idx = torch._fused_sdp_choice(q, k, v, mask, 0.0, causal and mask is None, enable_gqa=gqa)
    return _CHOICE_NAMES.get(int(idx), str(idx))


def _cxx_compiler() -> bool:
    """Inductor writes C++ for the CPU and needs a compiler to build it."""
    import os

    return shutil.which(os.environ.get("CXX", "g++")) is not None or shutil.which("clang++") is not None


def unsupported(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                causal: bool = True) -> str | None:
    """Why `backend` cannot run on these inputs here, or None when it can. Nothing is computed."""
    check_backend(backend)
    dev = q.device.type
    if backend in ("eager", "sdpa", "sdpa-math"):
        return None
    if backend == "flash-attn":
        if importlib.util.find_spec("flash_attn") is None:
            return "the flash-attn package is not installed (pip install flash-attn; it needs CUDA sm80+)"
        if dev != "cuda":
            return "flash-attn needs CUDA sm80+ (Ampere or newer); this device is the CPU"
        major, _ = torch.cuda.get_device_capability(q.device)
        if major < 8:
            return f"flash-attn needs CUDA sm80+; this GPU is sm{major}x"
        if q.dtype not in (torch.float16, torch.bfloat16):
            return f"flash-attn runs fp16/bf16 only, not {str(q.dtype).removeprefix('torch.')}"
        return None
    if backend == "flex":
        if dev == "cpu" and not _cxx_compiler():
            return "flex_attention compiles a C++ kernel on the CPU and no C++ compiler (g++/clang++) was found"
        if dev == "cuda" and importlib.util.find_spec("triton") is None:
            return "flex_attention on CUDA needs triton (not installed)"
        return None
    if dev == "cpu" and backend in CUDA_ONLY:
        return f"{backend} is a CUDA kernel; this device is the CPU (PyTorch's CPU kernels are math and flash)"
    from torch.nn.attention import sdpa_kernel

    gqa = q.shape[1] != k.shape[1]
    mask = None if not causal or q.shape[2] == k.shape[2] else _bottom_right(q.shape[2], k.shape[2], q.device)
    with warnings.catch_warnings(record=True) as caught, sdpa_kernel([_sdp_backend(backend)]):
        warnings.simplefilter("always")
        try:  # the dispatcher's own checks; on CUDA each rejected check warns with its reason
            torch._fused_sdp_choice(q, k, v, mask, 0.0, causal and mask is None, enable_gqa=gqa)
            return None
        except RuntimeError as e:
            why = "; ".join(dict.fromkeys(str(w.message).split("\n")[0] for w in caught))
            return f"{backend} cannot run these inputs: {why or str(e).splitlines()[0]}"


# ---------------------------------------------------------------- one call, every backend

def _bottom_right(n: int, end: int, device) -> torch.Tensor:
    return torch.ones(n, end, dtype=torch.bool, device=device).tril(diagonal=end - n)


@lru_cache(maxsize=64)
def _block_mask(n: int, end: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    offset = end - n

    def causal(b, h, q_idx, kv_idx):
        return q_idx + offset >= kv_idx

    return create_block_mask(causal, None, None, n, end, device=device)


@lru_cache(maxsize=1)
def _flex_compiled():
    """flex_attention compiled once, with dynamic sequence lengths: one compilation per head layout and dtype
    serves every length (static shapes would compile again for each one)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa", causal: bool = True,
              mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Attention of q over k, v with `backend` (see the module docstring). `mask` (bool, True = attend) is an
    alternative to `causal` for eager and the SDPA backends. Raises KernelSkipped where `backend` cannot run."""
    reason = unsupported(backend, q, k, v, causal)
    if reason:
        raise KernelSkipped(reason)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    n, end, gqa = q.shape[2], k.shape[2], q.shape[1] != k.shape[1]
    if backend == "eager":
        return eager_attention(q, k, v, mask, causal and mask is None, scale)
    if backend == "flex":
        if mask is not None:
            raise ValueError("flex here takes causal=True (a block mask); pass masks to eager or an SDPA backend")
        bm = _block_mask(n, end, q.device.type) if causal else None
        return _flex_compiled()(q, k, v, block_mask=bm, scale=scale, enable_gqa=gqa)
    if backend == "flash-attn":
        from flash_attn import flash_attn_func  # bottom-right causal alignment, as here

        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal,
                              softmax_scale=scale)
        return out.transpose(1, 2)
    if causal and n != end:  # SDPA's is_causal aligns top-left; decoding after a prefix needs bottom-right
        mask, causal = _bottom_right(n, end, q.device), False
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                              enable_gqa=gqa)
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel([_sdp_backend(backend)]):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                              enable_gqa=gqa)


def kernel_name(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> str:
    """What actually runs for `backend`: for "sdpa" the dispatcher's pick, for the others the forced kernel."""
    if backend == "sdpa":
        return f"sdpa -> {sdpa_choice(q, k, v, causal)}"
    return {"eager": "matmul + softmax + matmul", "flex": "flex_attention (inductor)",
            "flash-attn": "flash_attn_func"}.get(backend, backend.replace("sdpa-", "sdpa -> "))


# ---------------------------------------------------------------- memory: predict, then refuse

def peak_estimate(backend: str, batch: int, heads: int, kv_heads: int, n: int, head_dim: int,
                  dtype: torch.dtype, end: int | None = None) -> int:
    """Bytes an attention call allocates at its peak (inputs not counted), from the tensors it must hold at
    once. Unfused (eager, math): the output, GQA's repeated K and V, the boolean causal mask and, per score of
    the n x end matrix, what `eager_attention` keeps alive at its widest point: the masked scores in the input
    dtype plus fp32 logits and fp32 probabilities (8 bytes in fp32, where `.float()` is a no-op; b + 8 for a
    16-bit dtype). Fused kernels keep only tiles of the scores: the output, an fp32 accumulator of the same
    size and a softmax statistic per row, so their memory grows with n, not n^2."""
    check_backend(backend)
    end = n if end is None else end
    b = torch.empty((), dtype=dtype).element_size()
    out = batch * heads * n * head_dim * b
    if backend in FUSED:
        return out + batch * heads * n * head_dim * 4 + batch * heads * n * 4
    repeated = 2 * batch * heads * end * head_dim * b if kv_heads != heads else 0
    per_score = 8 if b == 4 else b + 8
    return out + repeated + n * end + batch * heads * n * end * per_score


def available_bytes(device: str = "cpu") -> int:
    """Memory a run may use now: the planner's HEADROOM share of free RAM, or of the GPU's free memory."""
    if str(device).startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * HEADROOM)
    from labkit.core.hardware import memory_bytes

    return int(memory_bytes()["available"] * HEADROOM)


def check_fits(need_bytes: int, what: str, device: str = "cpu") -> None:
    """Refuse (planner.PlanError, with the estimate) a run predicted not to fit, before it starts."""
    have = available_bytes(device)
    if need_bytes > have:
        raise PlanError(f"{what} needs about {need_bytes / 2**30:,.1f} GiB (estimate), {have / 2**30:,.1f} GiB "
                        f"is usable now ({HEADROOM:.0%} of free memory on {device}): refused before running")


# ---------------------------------------------------------------- prepacked fp32 linears


def prepack_unsupported(model: nn.Module) -> str | None:
    """Why `prepack_linears` cannot serve this model here, or None."""
    p = next(model.parameters(), None)
    return onednn_op_unsupported("oneDNN's prepacked linear", "mkldnn._linear_pointwise",
                                 "no parameters" if p is None else str(p.device))


class PackedLinear(nn.Module):
    """An fp32 linear that multiplies two or more rows through oneDNN with its weight packed once into the
    kernel's blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, what inductor's CPU freezing does), and one
    row through the original `nn.Linear`. Measured on this course's Xeon: `F.linear` (MKL's fp32 GEMM, which
    packs its operands on each call) took 2-3x as long for 8 rows as for one on the same weight bytes; the packed
    weight was 1.8x faster at 8 rows and about even from 96 rows up, but 0.85x at one row, hence the split.
    The original layer is kept (its state, and the one-row path): the weights are held twice. The two kernels
    round differently, so logits can differ from the plain model's in the last bits."""

    def __init__(self, linear: nn.Linear, rows_hint: int = 8):
        super().__init__()
        self.linear = linear
        self.rows_hint = rows_hint
        self._packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows_hint)

    def __getstate__(self):  # copy.deepcopy: oneDNN's opaque tensor cannot be copied; the copy packs its own
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() <= x.shape[-1] or x.dtype != torch.float32:
            return self.linear(x)
        if self._packed is None:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.linear.weight.detach(), self.rows_hint)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.linear.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"oneDNN prepacked from 2 rows, rows_hint={self.rows_hint}"


def prepack_linears(model: nn.Module, rows_hint: int = 8) -> nn.Module:
    """A copy of `model` whose fp32 `nn.Linear` layers are `PackedLinear`s (layers of other types or dtypes, e.g.
    quantized ones, are left as they are). `rows_hint`: the rows the packed layout is tuned for (a decode step's
    batch). Raises KernelSkipped with the reason where oneDNN's linear does not run."""
    import copy

    reason = prepack_unsupported(model)
    if reason:
        raise KernelSkipped(reason)
    out = copy.deepcopy(model)
    for name, mod in list(out.named_modules()):
        if type(mod) is nn.Linear and mod.weight.dtype == torch.float32:
            swap(out, name, lambda lin: PackedLinear(lin, rows_hint))
    return out
