"""quant's "int8-dynamic-onednn": W8A8 linears whose integer matmul runs in oneDNN's prepacked int8 kernel.

torchao's int8-dynamic scheme (per-token activation scales, per-channel weight scales) is only fast on a CPU
under torch.compile; PyTorch's x86 inductor backend lowers quantized linears to oneDNN's int8 linear, which uses
AMX or VNNI where the CPU has them. `OneDNNInt8Linear` calls that kernel eagerly, with the per-token scale
applied outside the integer matmul so a token's output does not depend on its neighbours (batch-invariant).
`labkit.techniques.quant.quantize(model, "int8-dynamic-onednn")` swaps it in; x86 CPUs only
(labkit.core.onednn.onednn_unsupported says why not elsewhere).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from labkit.core.hardware import cpu_features

# oneDNN (3.x, in torch 2.13) on a CPU with AMX sends an int8 matmul of at most SMALL_PROBLEM rows x outputs to its
# reference kernel (ref_int8) instead of the AMX one: a decode step's k/v projection of a GQA model (1 row x 256
# outputs, TinyLlama) took 7.4 ms there against 0.05 ms for 2 rows (ONEDNN_VERBOSE=1 names the kernel; rows x outputs
# 256 -> ref_int8, 257 -> brg_matmul, for 16 to 272 outputs and 1,024 to 4,096 inputs). So such a call is padded
# with zero rows past it: integer sums are per row, the real rows' outputs are unchanged.
SMALL_PROBLEM = 256
# The last activation quantized, so that sibling linears given the very same tensor (q/k/v, gate/up) quantize it
# once: (weak reference, its version counter or None, int8 rows, per-token scales).
_last_tokens: tuple = (lambda: None, None, None, None)


def quantize_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` as int8 rows [tokens, features] with one fp32 scale per token (absmax / 127, symmetric +-127), and
    the scales [tokens, 1]. The result for one tensor object is reused while that object is unchanged: q, k and
    v (gate and up) projections receive the same hidden states, so 4 quantizations per Llama layer instead of 7.
    Unchanged means: the same object, and, where PyTorch tracks it (outside inference mode), the same version
    counter (an in-place change bumps it). Inference tensors carry no counter: changing a linear's input in
    place between two sibling calls would be an unusual model, and is not supported."""
    global _last_tokens
    ref, version, xq, s = _last_tokens
    current = None if x.is_inference() else x._version
    if ref() is x and version == current:
        return xq, s
    x2 = x.reshape(-1, x.shape[-1])
    s = (x2.abs().amax(dim=1, keepdim=True).float() / 127).clamp_min(1e-12)  # abs+amax: ~3x faster than aminmax
    xs = x2.float().div_(s) if x2.dtype != torch.float32 else x2.div(s)
    xq = xs.round_().clamp_(-127, 127).to(torch.int8)
    _last_tokens = (weakref.ref(x), current, xq, s)
    return xq, s


def _qlinear(xq: torch.Tensor, packed, weight_scale: torch.Tensor, zero_points: torch.Tensor) -> torch.Tensor:
    """oneDNN's int8 linear on int8 rows `xq` (activation scale 1, zero point 0): fp32 sums x weight scales."""
    return torch.ops.onednn.qlinear_pointwise(xq, 1.0, 0, packed, weight_scale, zero_points, None, 1.0, 0,
                                              torch.float32, "none", [], "")


class OneDNNInt8Linear(nn.Module):
    """W8A8 linear: int8 weights with one scale per output channel; at run time each token's activations are
    scaled by their own absmax / 127, rounded to int8, multiplied by oneDNN's prepacked int8 kernel, and the
    int32 sums rescaled. The kernel is called with activation scale 1 and the per-token scale applied after it,
    so a token's output is computed from its own numbers only (integer sums are exact): batch-invariant.
    `weight` (int8) and `weight_scale` are the state; the prepacked copy oneDNN reads is made here, as part of
    quantizing (a first request would otherwise pay for it), and is not saved: it holds the same bytes in
    oneDNN's blocked layout, so the layer keeps both in memory; a deep copy packs its own on first use."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)
        self._packed = None
        self._pack()

    def _pack(self) -> None:
        self._packed = torch.ops.onednn.qlinear_prepack(self.weight, None)
        self._zero_points = torch.zeros(self.out_features, dtype=torch.int64)

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> OneDNNInt8Linear:
        w = lin.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        bias = None if lin.bias is None else lin.bias.detach().clone()
        return cls(q, scale, bias)

    def __getstate__(self):  # copy.deepcopy: oneDNN's opaque tensor cannot be copied; it is packed again
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if shape[-1] != self.in_features:
            raise ValueError(f"input has {shape[-1]} features; this layer takes {self.in_features}")
        if x.device.type != "cpu":
            raise ValueError(f"oneDNN's int8 linear runs on the CPU; this input is on {x.device} (quantize the "
                             "model for that device with another INT8 method)")
        if self._packed is None:
            self._pack()
        xq, s = quantize_tokens(x)
        rows = xq.shape[0]
        if rows * self.out_features <= SMALL_PROBLEM and cpu_features().get("amx_int8"):
            xq = torch.cat([xq, xq.new_zeros(SMALL_PROBLEM // self.out_features + 1 - rows, xq.shape[1])])
        y = _qlinear(xq, self._packed, self.weight_scale.float(), self._zero_points)[:rows]
        y = y.mul_(s)
        if self.bias is not None:
            y = y.add_(self.bias.float())
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
