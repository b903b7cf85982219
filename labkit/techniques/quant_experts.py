"""A mixture-of-experts model's experts, made quantizable.

transformers 5 keeps each MoE layer's experts as 3-D tensors in one module (`gate_up_proj` [experts, 2 x width,
hidden] and `down_proj` [experts, hidden, width] on Qwen3-MoE and Mixtral; gpt-oss stores them transposed, with
biases), not as nn.Linear layers. A method that rewrites nn.Linear layers leaves them as they were: on
Qwen3-30B-A3B that is 95% of the weights, and an "int4" row would time a model whose experts are still fp32.

`unfuse` turns each such module into `UnfusedExperts`: the same weights as one gate_up and one down nn.Linear per
expert, run by the loop transformers' "eager" experts implementation runs (each routed expert a matmul over the
tokens routed to it, in the same order). Every method that quantizes nn.Linear layers then quantizes the experts
too. The calibrated methods (gptq, awq, GPTQModel) and bitsandbytes (which quantizes while transformers loads a
saved model) do not reach them, so they refuse a MoE model with the reason (QuantSkipped): never a row that
reports the unquantized experts' speed or quality as the method's.

The lessons leave an unquantized model's experts as transformers runs them (on a CPU its "grouped_mm" kernel),
so a quantized row's factor over fp32 includes the change to the per-expert loop, and never rests on a baseline
slowed by it. Measured on one Qwen3-30B-A3B layer (2-core AMX Xeon, 4 alternating rounds, 32-token prompt): the
per-expert layers decode as fast as grouped_mm in fp32 (12.3 ms/token both) and 7% slower in bf16 (11.2 against
10.5); their prefill is 8% (fp32) and 15% (bf16) slower. The same greedy tokens in all.
"""

from __future__ import annotations

import torch
from torch import nn

from labkit.core.models import EXPERT_PARAMS, fused_experts

LAYOUTS = ("qwen3_moe", "mixtral", "gpt_oss")  # families whose fused experts `unfuse` knows
NOT_UNFUSED = ("gptq", "awq", "gptqmodel", "bnb-int8", "bnb-nf4")  # methods that do not reach unfused experts


class UnfusedExperts(nn.Module):
    """A fused experts module's weights as per-expert nn.Linear layers (`gate_up[e]`, `down[e]`), called as the
    fused module is: (hidden_states [tokens, hidden], top_k_index, top_k_weights [tokens, k]) -> [tokens, hidden].
    gpt-oss's variant keeps its biases, its interleaved gate/up columns and its clamped SwiGLU."""

    def __init__(self, fused: nn.Module, kind: str):
        super().__init__()
        self.kind, self.num_experts = kind, fused.gate_up_proj.shape[0]
        gpt_oss = kind == "gpt_oss"
        self.act_fn = None if gpt_oss else fused.act_fn
        self.alpha, self.limit = (fused.alpha, fused.limit) if gpt_oss else (None, None)
        self.gate_up, self.down = nn.ModuleList(), nn.ModuleList()
        with torch.no_grad():
            for e in range(self.num_experts):
                for mods, name in ((self.gate_up, "gate_up_proj"), (self.down, "down_proj")):
                    w = getattr(fused, name)[e]
                    w = w.T if gpt_oss else w  # gpt-oss: [in, out], used as x @ w
                    bias = getattr(fused, f"{name}_bias")[e] if gpt_oss else None
                    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
                    lin.weight.copy_(w)
                    if bias is not None:
                        lin.bias.copy_(bias)
                    mods.append(lin)

    def _act(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self.kind != "gpt_oss":
            gate, up = gate_up.chunk(2, dim=-1)
            return self.act_fn(gate) * up
        gate, up = gate_up[..., ::2].clamp(max=self.limit), gate_up[..., 1::2].clamp(-self.limit, self.limit)
        return (up + 1) * (gate * torch.sigmoid(gate * self.alpha))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        out = torch.zeros_like(hidden_states)
        mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts).permute(2, 1, 0)
        for e in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()[:, 0].tolist():
            top_k_pos, token_idx = torch.where(mask[e])
            h = self.down[e](self._act(self.gate_up[e](hidden_states[token_idx])))
            out.index_add_(0, token_idx, (h * top_k_weights[token_idx, top_k_pos, None]).to(out.dtype))
        return out


def expert_params(model: nn.Module) -> int:
    """Weights of the experts, fused or unfused (biases aside)."""
    fused = sum(getattr(m, p).numel() for m in fused_experts(model) for p in EXPERT_PARAMS)
    unfused = sum(lin.weight.numel() for m in model.modules() if isinstance(m, UnfusedExperts)
                  for lin in (*m.gate_up, *m.down))
    return fused + unfused


def share(model: nn.Module) -> float:
    """The experts' share of all the model's parameters."""
    return expert_params(model) / max(1, sum(p.numel() for p in model.parameters()))


def unsupported(model: nn.Module, method: str) -> str | None:
    """Why `method` cannot quantize this model's experts (None: it can, or the model has none)."""
    if not expert_params(model):
        return None
    kind = getattr(model.config, "model_type", type(model).__name__)
    if kind in LAYOUTS and method not in NOT_UNFUSED:
        return None
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    how = ("it does not reach the per-expert layers labkit makes of them (calibrating each expert on the tokens "
           "routed to it, or loading them through transformers, is not implemented)" if kind in LAYOUTS
           else f"labkit makes per-expert layers of {', '.join(LAYOUTS)} experts only")
    return (f"{method} quantizes nn.Linear layers, and this {kind} model keeps its experts ({share(model):.0%} of its "
            f"weights) as 3-D tensors: {how}, so it would leave them in {dtype} and its row would measure them, not "
            "the method")


def unfuse(model: nn.Module) -> int:
    """Replace every fused experts module of `model` (in place) by UnfusedExperts; returns how many it replaced.
    The fused tensors are released: the per-expert layers hold copies of them."""
    kind = getattr(getattr(model, "config", None), "model_type", "")
    where = {id(m): n for n, m in model.named_modules()}
    todo = [(where[id(m)], m) for m in fused_experts(model)] if kind in LAYOUTS else []
    for name, fused in todo:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, UnfusedExperts(fused, kind))
    return len(todo)
