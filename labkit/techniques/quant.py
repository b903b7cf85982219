"""Quantization: store the weights in fewer bits, so decode streams fewer bytes per token.

One entry point, `quantize(model, method, **cfg) -> model`. It returns a new model (the input is left as it
was) and attaches `model.labkit_quant`, a `QuantInfo` with the bytes and the seconds the method took.

Methods (see `METHODS`):
- "int8-weight-only" (W8A16) and "int8-dynamic" (W8A8, activations quantized per token at run time):
  torchao's `quantize_` with `Int8WeightOnlyConfig` / `Int8DynamicActivationInt8WeightConfig`.
- "int8-dynamic-onednn": torchao's int8-dynamic scheme (per-token activation scales, per-channel weight
  scales; a +-127 grid where torchao's reaches -128), its matmul through oneDNN's prepacked int8 linear
  (`torch.ops.onednn`, the kernel PyTorch's x86 inductor backend lowers quantized linears to: AMX or VNNI where
  the CPU has them). x86 CPU only (`labkit.core.onednn.onednn_unsupported` says why not elsewhere).
  `OneDNNInt8Linear` (in labkit.techniques.quant_onednn, importable from here) is the module; the per-token
  scale is applied outside the integer matmul, so a token's output does not depend on its neighbours.
- "int8-dynamic-legacy": PyTorch's older `torch.ao.quantization.quantize_dynamic` (fbgemm/x86, CPU only,
  one scale per tensor), as a contrast: deprecated, but still what many tutorials show.
- "bnb-int8" (LLM.int8) and "bnb-nf4": bitsandbytes through transformers' `BitsAndBytesConfig`. bitsandbytes
  quantizes while loading, so the model is saved to a temporary folder and loaded back with the config.
- "int4-rtn": torchao's group-wise int4 round-to-nearest with a real packed kernel (on the CPU the prototype
  `PrototypeInt4WeightOnlyConfig`, which needs a bf16 model; on CUDA `Int4WeightOnlyConfig`).
- "rtn", "gptq", "awq": readable labkit implementations that fake-quantize (quantize, then store the
  dequantized values), so quality can be compared at exactly equal bits and group size on the same grid.
  GPTQ and AWQ use calibration activations collected with forward hooks, layer by layer.
- "gptqmodel": the GPTQModel library, an optional extra; skipped with the reason when it is not installed.

A mixture-of-experts model's experts (3-D tensors in transformers 5, not nn.Linear) are first made per-expert
linear layers (labkit.techniques.quant_experts.unfuse), so every method above but the calibrated ones and
bitsandbytes quantizes them with the rest; those refuse a MoE model with the share of weights they would miss.

A method this machine cannot run raises `QuantSkipped(reason)` (`unsupported(method, device, dtype)` says why
before trying); notebook 02's experiment (labkit.lessons.quantization) records it as "skipped: <reason>" in that
method's row, never another method's numbers.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from labkit.core.models import swap, weight_bytes
from labkit.core.onednn import onednn_unsupported
from labkit.techniques import quant_experts
from labkit.techniques.quant_onednn import OneDNNInt8Linear, quantize_tokens  # noqa: F401 (quant.X callers)

METHODS = ("int8-weight-only", "int8-dynamic", "int8-dynamic-onednn", "int8-dynamic-legacy", "bnb-int8", "bnb-nf4",
           "int4-rtn", "rtn", "gptq", "awq", "gptqmodel")
FAKE_QUANT = ("rtn", "gptq", "awq")  # dequantized weights: quality only, no speed of their own
# 8-bit weights, real kernels
INT8_METHODS = ("int8-weight-only", "int8-dynamic", "int8-dynamic-onednn", "int8-dynamic-legacy", "bnb-int8")
# Methods whose greedy answers the engine serves alike alone and in a batch (tests/serve/test_invariance.py: 16
# requests of 8-256 tokens, 16 new tokens each, alone vs in batches of 8 at token budgets 64 and 512, embedded
# model, x86 CPU): weight-only int8, NF4 and the fake-quantized ones, 16/16 at both budgets. Not listed:
# torch.ao's quantize_dynamic scales per tensor (the whole batch shares one scale) and LLM.int8 picks its outlier
# columns over the whole batch, so a request's answer changes with its neighbours. torchao's "int8-dynamic" scales
# per token, yet measured 14/16 and 15/16 identical (budgets 64, 512), and "int4-rtn" (bf16 model) 14/16 and 16/16:
# probably rounding (activations to int8 steps, bf16) turns the last-bit differences of the engine's batched
# attention (padded widths, chunk boundaries) into different tokens. "int8-dynamic-onednn" rounds activations per
# token as int8-dynamic does; not measured in the engine here (its serving runs took over ten minutes), not listed.
BATCH_INVARIANT = ("int8-weight-only", "bnb-nf4", "rtn", "gptq", "awq")
# The number type each method's matmul runs in: activations quantized too (int8 x int8); every other method
# dequantizes its weights and multiplies in the model's own dtype. What a prefill's compute floor is taken at.
COMPUTE_DTYPE = {"int8-dynamic-legacy": "int8", "int8-dynamic": "int8", "int8-dynamic-onednn": "int8",
                 "bnb-int8": "int8"}


def check_methods(methods) -> list[str]:
    """A notebook's `methods` parameter: None means all of METHODS; unknown names fail naming the valid ones."""
    from labkit.core.params import ParamError

    chosen = list(METHODS) if methods is None else list(methods)
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown:
        raise ParamError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    return chosen


class QuantSkipped(RuntimeError):
    """This method cannot run with the installed libraries or on this hardware; the message says why."""


@dataclass
class QuantInfo:
    """What quantizing cost and what it saved. Bytes are as stored (packed data + scales + zero points)."""

    method: str
    seconds: float  # time to quantize (for bitsandbytes: load-and-quantize from a saved folder)
    bytes: int  # all parameters and buffers of the quantized model, in memory
    linear_bytes: int  # bytes of the quantized linear layers only
    linear_params: int  # their weight count
    fake: bool = False  # weights were dequantized back: `linear_bytes` is what packing them would take
    config: dict = field(default_factory=dict)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.linear_bytes / self.linear_params

    def to_dict(self) -> dict:
        return {"method": self.method, "quant_seconds": self.seconds, "bytes": self.bytes,
                "linear_bytes": self.linear_bytes, "linear_params": self.linear_params,
                "bits_per_weight": self.bits_per_weight, "fake_quant": self.fake, "config": self.config}


# ---------------------------------------------------------------- counting bytes

def _linear_names(model: nn.Module, skip: tuple[str, ...]) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith(skip)]


def _info(method: str, qmodel: nn.Module, names: list[str], params: int, seconds: float, cfg: dict,
          fake_bits: int | None = None, group_size: int | None = None) -> QuantInfo:
    mods = dict(qmodel.named_modules())
    if fake_bits is None:
        lin = sum(weight_bytes(mods[n]) for n in names)
    else:  # what packing would store: the codes, plus an fp16 scale and a `bits`-bit zero point per group
        groups = sum(math.ceil(mods[n].weight.shape[1] / (group_size or mods[n].weight.shape[1]))
                     * mods[n].weight.shape[0] for n in names)
        lin = (params * fake_bits + groups * (16 + fake_bits)) // 8
        lin += sum(weight_bytes(mods[n]) - mods[n].weight.numel() * mods[n].weight.element_size() for n in names)
    return QuantInfo(method, seconds, weight_bytes(qmodel), lin, params, fake=fake_bits is not None,
                     config=dict(cfg))


# ---------------------------------------------------------------- the group-wise grid (shared by rtn/gptq/awq)

def fake_quant(w: torch.Tensor, bits: int = 4, group_size: int | None = 128) -> torch.Tensor:
    """Round-to-nearest on an asymmetric grid, one (scale, zero) per row and group of `group_size` inputs;
    returns the dequantized weights. `group_size=None`: one group per row."""
    out_f, in_f = w.shape
    g = group_size or in_f
    if in_f % g:
        raise ValueError(f"in_features {in_f} is not a multiple of group_size {g}")
    wg = w.float().reshape(out_f, in_f // g, g)
    scale, zero = _grid(wg, bits)
    q = torch.clamp(torch.round(wg / scale) + zero, 0, 2**bits - 1)
    return ((q - zero) * scale).reshape(out_f, in_f).to(w.dtype)


def _grid(wg: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point from each group's min and max (last dim is the group)."""
    lo, hi = wg.amin(dim=-1, keepdim=True), wg.amax(dim=-1, keepdim=True)
    scale = ((hi - lo) / (2**bits - 1)).clamp(min=1e-8)
    zero = torch.round(-lo / scale)
    return scale, zero


def gptq_weight(w: torch.Tensor, H: torch.Tensor, bits: int = 4, group_size: int | None = 128,
                damp: float = 0.01) -> torch.Tensor:
    """GPTQ (Frantar et al. 2022) for one weight matrix: quantize columns left to right, and after each one
    move its rounding error onto the columns not yet quantized, weighted by the inverse Hessian
    H = 2 X^T X of the layer's calibration inputs, so the layer's *output* error stays small.
    `damp` adds that fraction of the mean diagonal to H, which keeps its Cholesky factor stable."""
    W = w.detach().clone().float()
    n = W.shape[1]
    H = H.detach().clone().float()
    dead = torch.diag(H) == 0  # inputs that were always zero: their weights do not matter
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(n)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    block = group_size or 128  # columns updated together; a group always starts a block
    Q = torch.zeros_like(W)
    if group_size is None:  # one grid per row, from the original weights
        scale, zero = (t.reshape(-1) for t in _grid(W.unsqueeze(1), bits))
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        if group_size is not None:  # this group's grid, from weights already corrected for earlier errors
            scale, zero = (t.reshape(-1) for t in _grid(W1.unsqueeze(1), bits))
        for i in range(i2 - i1):
            w_col = W1[:, i]
            q = (torch.clamp(torch.round(w_col / scale) + zero, 0, 2**bits - 1) - zero) * scale
            Q[:, i1 + i] = q
            err = (w_col - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # lazy batch update of the columns after this block
    return Q.to(w.dtype)


def awq_scales(weights: list[torch.Tensor], x: torch.Tensor, bits: int = 4, group_size: int | None = 128,
               n_grid: int = 20) -> torch.Tensor:
    """AWQ (Lin et al. 2023) scale search for linears that read the same input `x` (tokens, in_features):
    input channels with large activations matter most, so scale their weights up before rounding
    (s = mean|x|^a, a searched on a grid in [0, 1)) and divide the activations by s. Returns the s with the
    smallest output error on `x`; a = 0 (s = 1) is plain RTN, so the result is never worse than RTN here."""
    x = x.float()
    x_mean = x.abs().mean(dim=0)
    refs = [x @ w.float().T for w in weights]
    best, best_s = float("inf"), torch.ones_like(x_mean)
    for k in range(n_grid):
        s = x_mean.pow(k / n_grid).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        err = sum(float((x @ (fake_quant(w.float() * s, bits, group_size) / s).T - r).pow(2).mean())
                  for w, r in zip(weights, refs, strict=True))
        if err < best:
            best, best_s = err, s
    return best_s


# ---------------------------------------------------------------- calibration

def _blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder layers, quantized one after another; a model without them is one block."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return list(layers) if layers is not None else [model]


@torch.no_grad()
def _layer_inputs(model: nn.Module, block: nn.Module, calib: torch.Tensor, skip: tuple[str, ...],
                  max_tokens: int) -> dict[str, tuple[nn.Linear, torch.Tensor, int]]:
    """Run the calibration batch through the (partly quantized) model and keep the input of every linear in
    `block`: {name: (linear, inputs of shape (tokens, in_features), id of the tensor it read)}. Earlier blocks
    are already quantized, so each block is fitted to the inputs it will really see."""
    found = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear) and not n.endswith(skip)}
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in found}
    source: dict[str, int] = {}  # which tensor fed each linear: q/k/v (and gate/up) read the same one

    def keep(name: str, x: torch.Tensor) -> None:
        source.setdefault(name, x.data_ptr())
        seen[name].append(x.reshape(-1, x.shape[-1]))

    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: keep(n, inp[0]))
             for n, m in found.items()]
    try:
        for row in calib:
            model(input_ids=row.unsqueeze(0))
    finally:
        for h in hooks:
            h.remove()
    return {n: (found[n], torch.cat(seen[n])[:max_tokens], source[n]) for n in found}


@torch.no_grad()
def _calibrated(model: nn.Module, method: str, calib: torch.Tensor, bits: int, group_size: int | None,
                skip: tuple[str, ...], damp: float, n_grid: int, max_tokens: int) -> None:
    """GPTQ or AWQ, block by block, in place."""
    for block in _blocks(model):
        inputs = _layer_inputs(model, block, calib, skip, max_tokens)
        if method == "gptq":
            for lin, x, _ in inputs.values():
                x = x.float()
                H = 2 * x.T @ x / x.shape[0]
                lin.weight.copy_(gptq_weight(lin.weight, H, bits, group_size, damp))
        else:  # awq: linears fed by the very same tensor (q/k/v, gate/up) share one scale, as when folded
            groups: dict[int, list] = {}
            for lin, x, src in inputs.values():
                groups.setdefault(src, []).append((lin, x))
            for members in groups.values():
                x = members[0][1]
                s = awq_scales([lin.weight for lin, _ in members], x, bits, group_size, n_grid)
                for lin, _ in members:
                    lin.weight.copy_(fake_quant(lin.weight.float() * s, bits, group_size).div(s).to(lin.weight.dtype))


# ---------------------------------------------------------------- the entry point

def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _require_torchao():
    try:
        import torchao  # noqa: F401
        from torchao.quantization import quantize_
    except ImportError as e:
        raise QuantSkipped(f"torchao is not installed ({e}): pip install torchao==0.18.0") from None
    return quantize_


def _bnb(model: nn.Module, method: str, skip: tuple[str, ...], compute_dtype: torch.dtype) -> nn.Module:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise QuantSkipped(f"bitsandbytes is not installed ({e}): pip install bitsandbytes==0.50.2") from None
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise QuantSkipped("bitsandbytes quantizes while transformers loads a saved model; this model is not "
                           "a transformers PreTrainedModel")
    dev = _device(model)
    skip_mods = [s for s in skip]
    if method == "bnb-int8":
        cfg = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_mods)
    else:
        cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                                 llm_int8_skip_modules=skip_mods)
    with tempfile.TemporaryDirectory(prefix="labkit-bnb-") as tmp:
        model.save_pretrained(tmp)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*inputs will be cast.*")
            q = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=cfg, dtype=model.dtype,
                                                     device_map={"": str(dev)})
        q.labkit_load_seconds = time.perf_counter() - t0
    return q.eval()


def _gptqmodel() -> None:
    try:
        import gptqmodel
    except ImportError:
        raise QuantSkipped("GPTQModel is not installed: it is an optional extra, not in requirements.txt, "
                           "because 7.7 needs torch>=2.14.1 and 7.6 pins numpy 2.2.6 (the course pins torch 2.13 "
                           "and numpy 2.4.6); labkit's 'gptq' runs the same algorithm") from None
    raise QuantSkipped(f"GPTQModel {gptqmodel.__version__} is installed, but labkit has no tested adapter for "
                       "it yet; labkit's 'gptq' runs the same algorithm")


def unsupported(method: str, device: str, dtype: torch.dtype) -> str | None:
    """Why `method` cannot quantize a model on `device` ("cpu", "cuda") held in `dtype`, or None if it can.
    `quantize` raises QuantSkipped with this reason; callers planning ahead (the case study) ask first."""
    if method == "int8-dynamic-onednn":
        return onednn_unsupported(device, dtype)
    if method == "int8-dynamic-legacy" and device != "cpu":
        return "torch.ao.quantization.quantize_dynamic runs on the CPU only (fbgemm/x86 kernels)"
    if method == "int8-dynamic-legacy" and dtype != torch.float32:
        return f"torch.ao.quantization.quantize_dynamic needs an fp32 model, got {dtype}"
    if method == "int4-rtn" and device == "cpu" and dtype != torch.bfloat16:
        return (f"torchao's CPU int4 kernel needs a bf16 model (got {dtype}); cast it with "
                "model.to(torch.bfloat16) first")
    return None


def quantize(model: nn.Module, method: str, *, bits: int = 4, group_size: int | None = 128,
             calib: torch.Tensor | None = None, skip: tuple[str, ...] = ("lm_head",), damp: float = 0.01,
             n_grid: int = 20, max_tokens: int = 4096, inplace: bool = False) -> nn.Module:
    """Quantize the linear layers of `model` with `method` (one of METHODS) and return the new model with
    `model.labkit_quant` (a QuantInfo). Linears whose name ends with one of `skip` stay as they are (the
    output head by default, as GPTQ, AWQ and bitsandbytes do). `bits`/`group_size` apply to rtn, gptq, awq
    (and group_size to int4-rtn); `calib` (token ids, (samples, seq_len)) is required by gptq and awq.
    `inplace=True` rewrites `model` itself (not for bitsandbytes, which loads a new model). Raises
    QuantSkipped when the libraries or hardware here cannot run `method`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    skip = tuple(skip)
    dev = _device(model)
    names = _linear_names(model, skip)
    params = sum(dict(model.named_modules())[n].weight.numel() for n in names)
    cfg = {"bits": bits, "group_size": group_size, "skip": list(skip)} if method in FAKE_QUANT + ("int4-rtn",) \
        else {"skip": list(skip)}

    if method == "gptqmodel":
        _gptqmodel()
    if method in ("gptq", "awq", "gptqmodel") and calib is None:
        raise ValueError(f"{method} needs calibration token ids: calib=labkit.core.models.prompt_ids(256, batch=16, "
                         "tokenizer=tok, source='calibration')")
    reason = unsupported(method, dev.type, next(model.parameters()).dtype) or quant_experts.unsupported(model, method)
    if reason:
        raise QuantSkipped(reason)

    if method.startswith("bnb-"):
        compute = torch.bfloat16 if model.dtype == torch.bfloat16 else torch.float32
        q = _bnb(model, method, skip, compute)
        cfg["compute_dtype"] = str(compute) if method == "bnb-nf4" else "fp16 (LLM.int8 casts its inputs)"
        q.labkit_quant = _info(method, q, names, params, q.labkit_load_seconds, cfg)
        return q

    q = model if inplace else copy.deepcopy(model)
    t0 = time.perf_counter()
    if quant_experts.unfuse(q):  # a MoE model's 3-D experts become per-expert nn.Linear layers, quantized below
        names = _linear_names(q, skip)
        params = sum(q.get_submodule(n).weight.numel() for n in names)
        cfg["experts"] = f"{quant_experts.expert_params(q)} weights as per-expert linear layers (quant_experts)"
    cfg.update(_rewrite(q, method, names, dev, skip, bits=bits, group_size=group_size, calib=calib, damp=damp,
                        n_grid=n_grid, max_tokens=max_tokens))
    seconds = time.perf_counter() - t0
    q.eval()
    q.labkit_quant = _info(method, q, names, params, seconds, cfg,
                           fake_bits=bits if method in FAKE_QUANT else None, group_size=group_size)
    return q


def quantize_head(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Only the output head (`lm_head`) to int8, weight-only (torchao), the rest as it is. With few layers, or a
    large vocabulary, the head is a big share of the bytes a decode step reads; llama.cpp's q8_0 quantizes it
    too."""
    head = model.get_output_embeddings()
    if head is None or getattr(model.config, "tie_word_embeddings", False):
        raise QuantSkipped("the head is tied to the embedding table: quantizing it would quantize the lookup too")
    name = next(n for n, m in model.named_modules() if m is head)
    q = model if inplace else copy.deepcopy(model)
    t0 = time.perf_counter()
    quantize_ = _require_torchao()
    quantize_(q, _torchao_config("int8-weight-only", _device(q), None),
              filter_fn=lambda mod, fqn: isinstance(mod, nn.Linear) and fqn == name)
    q.eval()
    q.labkit_quant = _info("int8-weight-only", q, [name], head.weight.numel(), time.perf_counter() - t0,
                           {"only": name})
    return q


def _rewrite(q: nn.Module, method: str, names: list[str], dev: torch.device, skip: tuple[str, ...], *, bits: int,
             group_size: int | None, calib: torch.Tensor | None, damp: float, n_grid: int, max_tokens: int) -> dict:
    """Quantize the linears `names` of `q` in place with `method` (all but bitsandbytes); returns what the
    method adds to the config."""
    if method in ("int8-weight-only", "int8-dynamic", "int4-rtn"):
        quantize_ = _require_torchao()
        quantize_(q, _torchao_config(method, dev, group_size), filter_fn=_linear_filter(skip))
    elif method == "int8-dynamic-onednn":
        for name in names:
            swap(q, name, OneDNNInt8Linear.from_linear)
    elif method == "int8-dynamic-legacy":
        def legacy(lin: nn.Module) -> nn.Module:  # quantize_dynamic takes a set of types; swap only this linear
            return torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, UserWarning, FutureWarning))
            for name in names:
                swap(q, name, legacy)
    elif method == "rtn":
        with torch.no_grad():
            for name in names:
                lin = q.get_submodule(name)
                lin.weight.copy_(fake_quant(lin.weight, bits, group_size))
    else:  # gptq, awq
        _calibrated(q, method, calib.to(dev), bits, group_size, skip, damp, n_grid, max_tokens)
        return ({"calib_shape": list(calib.shape), "damp": damp} if method == "gptq"
                else {"calib_shape": list(calib.shape), "n_grid": n_grid})
    return {}


def _linear_filter(skip: tuple[str, ...]) -> Callable[[nn.Module, str], bool]:
    return lambda mod, fqn: isinstance(mod, nn.Linear) and not fqn.endswith(skip)


def _torchao_config(method: str, dev: torch.device, group_size: int | None):
    """torchao 0.18's configs. set_inductor_config=False: otherwise they change global torch._inductor settings
    as a side effect; whoever compiles the model sets what the compiler needs, in the open."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    if method == "int8-weight-only":
        return Int8WeightOnlyConfig(set_inductor_config=False)
    if method == "int8-dynamic":
        return Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    gs = group_size or 128
    if gs not in (32, 64, 128, 256):
        raise QuantSkipped(f"torchao int4 supports group sizes 32, 64, 128, 256, not {gs}")
    if dev.type == "cuda":  # tinygemm layout (not exercised on this course's CPU CI)
        from torchao.quantization import Int4WeightOnlyConfig

        return Int4WeightOnlyConfig(group_size=gs, int4_packing_format="tile_packed_to_4d",
                                    set_inductor_config=False)
    if dev.type != "cpu":
        raise QuantSkipped(f"torchao int4 has kernels for CPU and CUDA, not {dev.type}")
    try:
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    except ImportError as e:
        raise QuantSkipped(f"this torchao has no CPU int4 path ({e}); torchao==0.18.0 has it") from None
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        raise QuantSkipped("this PyTorch build lacks the CPU int4 matmul (aten._weight_int4pack_mm_for_cpu)")
    return PrototypeInt4WeightOnlyConfig(group_size=gs, set_inductor_config=False)
