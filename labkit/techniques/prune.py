"""Pruning: remove weights, and find out which removals make a model faster and which only make it worse.

One entry point, `prune(model, method, sparsity=..., **cfg) -> model`, in the style of `quant.quantize`. It
returns a new model (the input is left as it was) with `model.labkit_prune`, a `PruneInfo`.

Methods (see `METHODS`); every one acts on the decoder layers only: embeddings, norms and the output head stay
dense, as in the Wanda and SparseGPT papers.
- "magnitude": unstructured. Zero the `sparsity` fraction of each linear weight with the smallest |w|,
  compared across the whole matrix. The matrices keep their shape: dense kernels multiply the zeros too.
- "wanda" (Sun et al. 2023): unstructured. Score |w_ij| x ||x_j||_2, the L2 norm of input channel j's
  activations on the calibration tokens, compared within each output row; layer by layer, so each layer is
  scored on the inputs the already-pruned layers before it produce.
- "nm": N:M semi-structured (2:4 by default: in every group of M consecutive inputs of a row, keep N), scored
  by magnitude or Wanda (`score=`). The pattern sparse tensor cores run (`to_sparse`, layout "2:4").
- "ffn": structured. Remove the `sparsity` fraction of the SwiGLU intermediate channels of every layer, those
  with the smallest activation-aware importance ||a_j||_2 x ||W_down[:, j]||_2 (a_j: the channel's input to
  down_proj on the calibration tokens). gate/up lose rows, down loses columns: smaller matrices.
- "heads": structured. Remove whole GQA groups (a K/V head and the query heads that read it) from every
  layer, those whose o_proj input columns matter least (the same importance, summed over the group).
- "layers": structured. Remove the decoder layers that change their input least: the highest mean cosine
  similarity between a layer's input and output hidden states on the calibration tokens (ShortGPT's idea).
A structurally pruned model is a normal transformers Llama with smaller dimensions; its config says so, and it
saves and reloads with save_pretrained/from_pretrained.

`to_sparse(model, layout)` runs the zeros through a sparse kernel: "csr" (torch's CSR matmul, any CPU) or
"2:4" (torch.sparse.to_sparse_semi_structured, CUDA sm80+ only). What this machine cannot run raises
`PruneSkipped(reason)`; the experiment records it as a skipped row, never another method's numbers.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from labkit.core.models import swap, weight_bytes

METHODS = ("magnitude", "wanda", "nm", "ffn", "heads", "layers")
UNSTRUCTURED = ("magnitude", "wanda")
STRUCTURED = ("ffn", "heads", "layers")
CALIBRATED = ("wanda", "ffn", "heads", "layers")  # and "nm" with score="wanda"
LAYOUTS = ("csr", "2:4")


class PruneSkipped(RuntimeError):
    """This method or kernel cannot run on this hardware or with these libraries; the message says why."""


@dataclass
class PruneInfo:
    """What pruning removed. `sparsity` is what was asked; `achieved` what was removed, as a fraction of the
    pruned unit (weights of the decoder linears, FFN channels, GQA groups or layers: `unit` says which)."""

    method: str
    sparsity: float
    achieved: float
    unit: str
    params_before: int  # all parameters of the model
    params_after: int  # all parameters (structured: the smaller model)
    nonzero_after: int  # parameters that are not zero (unstructured: what a sparse format would keep)
    bytes: int  # the model as stored in memory (zeros included: dense storage)
    seconds: float
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"method": self.method, "sparsity": self.sparsity, "achieved": self.achieved, "unit": self.unit,
                "params_before": self.params_before, "params_after": self.params_after,
                "nonzero_after": self.nonzero_after, "bytes": self.bytes, "prune_seconds": self.seconds,
                "config": self.config}


# ---------------------------------------------------------------- where the decoder's linears are

def _layers(model: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError("prune expects a transformers decoder model with model.model.layers (Llama, Qwen2, ...)")
    return layers


def _linears(layer: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _nonzero(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


# ---------------------------------------------------------------- calibration, one layer at a time

class _Stop(Exception):
    """Raised by a hook once the layer being calibrated has run: the layers after it are not needed."""


def _run_until(model: nn.Module, layer: nn.Module, calib: torch.Tensor) -> None:
    """Forward the calibration batch (all rows at once: they have the same length, so nothing is padded)
    through `model`, stopping as soon as `layer` has produced its output."""
    def stop(*_) -> None:
        raise _Stop

    hook = layer.register_forward_hook(stop)
    try:
        model(input_ids=calib, use_cache=False)
    except _Stop:
        pass
    finally:
        hook.remove()


@torch.no_grad()
def _input_norms(model: nn.Module, layer: nn.Module, calib: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Sum over the calibration tokens of x_j^2 for each input channel j of the linears `names` of `layer`,
    with the model as it is now (earlier layers already pruned). Returns {name: ||x_j||_2 per channel}."""
    mods = _linears(layer)
    sq = {n: torch.zeros(mods[n].in_features, dtype=torch.float32, device=calib.device) for n in names}

    def keep(name: str, x: torch.Tensor) -> None:
        sq[name] += x.detach().float().reshape(-1, x.shape[-1]).pow(2).sum(0)

    hooks = [mods[n].register_forward_hook(lambda mod, inp, out, n=n: keep(n, inp[0])) for n in names]
    try:
        _run_until(model, layer, calib)
    finally:
        for h in hooks:
            h.remove()
    return {n: s.sqrt() for n, s in sq.items()}


@torch.no_grad()
def layer_similarity(model: nn.Module, calib: torch.Tensor) -> list[float]:
    """Mean cosine similarity between each decoder layer's input and output hidden states on the calibration
    tokens: near 1, the layer barely changes what flows through it."""
    layers = _layers(model)
    sims: list[list[float]] = [[] for _ in layers]

    def keep(i: int, args, kwargs, out) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        y = out[0] if isinstance(out, tuple) else out
        sims[i].append(float(nn.functional.cosine_similarity(x.float(), y.float(), dim=-1).mean()))  # per token

    hooks = [layer.register_forward_hook(lambda m, a, k, o, i=i: keep(i, a, k, o), with_kwargs=True)
             for i, layer in enumerate(layers)]
    try:
        _run_until(model, layers[-1], calib)
    finally:
        for h in hooks:
            h.remove()
    return [sum(s) / len(s) for s in sims]


# ---------------------------------------------------------------- unstructured and N:M masks

def _zero_smallest(w: torch.Tensor, score: torch.Tensor, k: int) -> None:
    """Zero exactly the `k` entries of `w` with the smallest `score` (whole matrix), in place. kthvalue is
    O(n), where a full sort of a 45M-entry matrix takes seconds; ties at the threshold are broken by position."""
    if k <= 0:
        return
    flat = score.reshape(-1).contiguous()
    if flat.device.type == "cpu":  # numpy's introselect: ~7x faster than torch's kthvalue on a CPU
        thr = torch.as_tensor(np.partition(flat.numpy(), k - 1)[k - 1])
    else:
        thr = flat.kthvalue(k).values
    drop = flat <= thr
    extra = int(drop.sum()) - k  # more than k when several entries tie with the k-th smallest
    if extra > 0:
        tie = (flat == thr).nonzero().squeeze(1)
        drop[tie[-extra:]] = False
    w.view(-1).masked_fill_(drop, 0)


def _zero_smallest_per_row(w: torch.Tensor, score: torch.Tensor, k: int) -> None:
    """Zero the `k` entries with the smallest `score` in each row of `w`, in place."""
    if k <= 0:
        return
    idx = torch.topk(score, k, dim=1, largest=False).indices
    w.scatter_(1, idx, 0)


def nm_mask(score: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean mask keeping the `n` highest scores in every group of `m` consecutive inputs of each row."""
    out_f, in_f = score.shape
    if in_f % m:
        raise ValueError(f"N:M needs M to divide the input dimension: {in_f} inputs are not a multiple of M={m}")
    groups = score.reshape(out_f, in_f // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, torch.topk(groups, n, dim=2).indices, True)
    return keep.reshape(out_f, in_f)


@torch.no_grad()
def prune_weight_(w: torch.Tensor, method: str, sparsity: float = 0.5, x_norm: torch.Tensor | None = None,
                  n: int = 2, m: int = 4) -> None:
    """One weight matrix (out, in), in place, by the rule of `method`: "magnitude" (smallest |w| in the whole
    matrix), "wanda" (smallest |w| x ||x_j|| in each row; `x_norm` holds ||x_j||) or "nm" (N of every M inputs
    kept, by |w|, or by |w| x ||x_j|| when `x_norm` is given)."""
    score = w.abs().float()
    if x_norm is not None:
        score = score * x_norm.float().unsqueeze(0)
    if method == "magnitude":
        _zero_smallest(w, score, round(sparsity * w.numel()))
    elif method == "wanda":
        if x_norm is None:
            raise ValueError("wanda scores need the input channels' activation norms (x_norm)")
        _zero_smallest_per_row(w, score, round(sparsity * w.shape[1]))
    elif method == "nm":
        w.mul_(nm_mask(score, n, m).to(w.dtype))
    else:
        raise ValueError(f"unknown weight rule {method!r}; choose 'magnitude', 'wanda' or 'nm'")


@torch.no_grad()
def _unstructured(model: nn.Module, method: str, sparsity: float, calib: torch.Tensor | None, n: int, m: int) -> float:
    """magnitude / wanda / nm over every decoder linear, layer by layer, in place; returns the fraction of the
    decoder linears' weights now zero."""
    zeros = total = 0
    for layer in _layers(model):
        lins = _linears(layer)
        norms = _input_norms(model, layer, calib, list(lins)) if calib is not None else {}
        for name, lin in lins.items():
            prune_weight_(lin.weight, method, sparsity, norms.get(name), n, m)
            zeros += lin.weight.numel() - int(torch.count_nonzero(lin.weight))
            total += lin.weight.numel()
    return zeros / total


# ---------------------------------------------------------------- structured: smaller matrices

def _shrink(lin: nn.Linear, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> nn.Linear:
    """A new nn.Linear holding the rows `out_idx` and the columns `in_idx` of `lin` (None: all)."""
    w = lin.weight.data
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None:
        w = w[:, in_idx]
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if lin.bias is not None:
        new.bias.data.copy_(lin.bias.data if out_idx is None else lin.bias.data[out_idx])
    return new


def _units(sparsity: float, total: int, what: str) -> int:
    """How many of `total` units (channels, groups, layers) a sparsity removes: the nearest whole number, at
    least one when a cut was asked for, never all of them."""
    k = max(1, round(sparsity * total)) if sparsity > 0 else 0
    if k >= total:
        valid = f"sparsity in [0, {(total - 0.5) / total:.3f})" if total > 1 else "there is only one to keep"
        raise ValueError(f"sparsity {sparsity} would remove all {total} {what}; keep at least one ({valid})")
    return k


@torch.no_grad()
def _ffn(model: nn.Module, sparsity: float, calib: torch.Tensor) -> float:
    """Remove the least important intermediate channels of every MLP (the same number in each layer, since a
    transformers config holds one intermediate_size)."""
    inter = model.config.intermediate_size
    k = _units(sparsity, inter, "FFN channels")
    for layer in _layers(model):
        mlp = layer.mlp
        norms = _input_norms(model, layer, calib, ["mlp.down_proj"])["mlp.down_proj"]
        importance = norms * mlp.down_proj.weight.float().norm(dim=0)
        keep = torch.sort(torch.topk(importance, inter - k).indices).values
        mlp.gate_proj, mlp.up_proj = _shrink(mlp.gate_proj, keep), _shrink(mlp.up_proj, keep)
        mlp.down_proj = _shrink(mlp.down_proj, in_idx=keep)
        mlp.intermediate_size = inter - k
    model.config.intermediate_size = inter - k
    return k / inter


def check_heads(config, heads: int) -> int:
    """Query heads to remove per layer -> GQA groups to remove, refusing a count that splits a group."""
    q, kv = config.num_attention_heads, config.num_key_value_heads
    rep = q // kv
    valid = list(range(rep, q, rep))
    if heads % rep or not 0 < heads < q:
        raise ValueError(f"heads={heads} would split a GQA group or remove every head: this model has {q} query "
                         f"heads in {kv} groups of {rep} (each group shares one K/V head); remove one of {valid}")
    return heads // rep


@torch.no_grad()
def _heads(model: nn.Module, sparsity: float | None, calib: torch.Tensor, heads: int | None) -> float:
    """Remove whole GQA groups from every layer: their query rows in q_proj, their K/V rows in k_proj and
    v_proj, their columns in o_proj."""
    cfg = model.config
    q, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // q
    rep = q // kv
    groups = check_heads(cfg, heads) if heads is not None else _units(sparsity, kv, "GQA groups (K/V heads)")
    for layer in _layers(model):
        att = layer.self_attn
        norms = _input_norms(model, layer, calib, ["self_attn.o_proj"])["self_attn.o_proj"]
        col = norms * att.o_proj.weight.float().norm(dim=0)  # per input column of o_proj
        importance = col.reshape(kv, rep * hd).sum(1)  # columns of a group's query heads are contiguous
        kept = torch.sort(torch.topk(importance, kv - groups).indices).values
        kv_rows = (kept.unsqueeze(1) * hd + torch.arange(hd, device=kept.device)).reshape(-1)
        q_rows = (kept.unsqueeze(1) * rep * hd + torch.arange(rep * hd, device=kept.device)).reshape(-1)
        att.q_proj, att.o_proj = _shrink(att.q_proj, q_rows), _shrink(att.o_proj, in_idx=q_rows)
        att.k_proj, att.v_proj = _shrink(att.k_proj, kv_rows), _shrink(att.v_proj, kv_rows)
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = (kv - groups) * rep, kv - groups, hd
    return groups / kv


@torch.no_grad()
def _drop_layers(model: nn.Module, sparsity: float, calib: torch.Tensor) -> tuple[float, list[int]]:
    """Remove the layers whose output is most like their input; renumber the rest for the KV cache."""
    layers = _layers(model)
    k = _units(sparsity, len(layers), "decoder layers")
    sims = layer_similarity(model, calib)
    drop = sorted(sorted(range(len(layers)), key=lambda i: -sims[i])[:k])
    kept = [layer for i, layer in enumerate(layers) if i not in drop]
    for i, layer in enumerate(kept):
        layer.self_attn.layer_idx = i
    model.model.layers = nn.ModuleList(kept)
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [t for i, t in enumerate(model.config.layer_types) if i not in drop]
    return k / len(layers), drop


# ---------------------------------------------------------------- the entry point

def check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a number in [0, 1) (the fraction removed), got {sparsity!r}")
    return float(sparsity)


def prune(model: nn.Module, method: str, sparsity: float | None = None, *, calib: torch.Tensor | None = None,
          n: int = 2, m: int = 4, score: str = "magnitude", heads: int | None = None,
          inplace: bool = False) -> nn.Module:
    """Prune `model`'s decoder layers with `method` (one of METHODS) and return the new model with
    `model.labkit_prune` (a PruneInfo). `sparsity` is the fraction removed, in [0, 1): of each linear's weights
    (magnitude, wanda), of the FFN channels (ffn), of the GQA groups (heads) or of the layers (layers); the
    structured methods round to whole units. nm takes `n`, `m` and `score` ("magnitude" or "wanda") and
    removes 1 - n/m. heads may take `heads=` (query heads to remove per layer, whole groups only) instead of a
    sparsity. `calib` (token ids, (samples, seq_len)) feeds every activation-aware method."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    if method == "nm":
        if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
            raise ValueError(f"N:M needs integers 0 < N < M, got {n}:{m}")
        if score not in ("magnitude", "wanda"):
            raise ValueError(f"unknown N:M score {score!r}; choose 'magnitude' or 'wanda'")
        if sparsity is not None and abs(check_sparsity(sparsity) - (1 - n / m)) > 1e-9:
            raise ValueError(f"{n}:{m} removes exactly {1 - n / m:g} of the weights; pass sparsity=None or "
                             f"{1 - n / m:g}, got {sparsity}")
        sparsity = 1 - n / m
    elif method == "heads" and heads is not None:
        if sparsity is not None:
            raise ValueError("give heads= (query heads to remove per layer) or sparsity=, not both")
        check_heads(model.config, heads)
    elif sparsity is None:
        raise ValueError(f"{method} needs sparsity= (the fraction to remove, in [0, 1))")
    else:
        sparsity = check_sparsity(sparsity)
    needs_calib = method in CALIBRATED or (method == "nm" and score == "wanda")
    if needs_calib and calib is None:
        raise ValueError(f"{method} needs calibration token ids: calib=labkit.core.models.prompt_ids(128, batch=8, "
                         "tokenizer=tok, source='calibration')")
    if not needs_calib:
        calib = None
    _layers(model)

    before = _params(model)
    p = model if inplace else copy.deepcopy(model)
    dev = next(p.parameters()).device
    calib = calib.to(dev) if calib is not None else None
    cfg: dict = {"calib_shape": list(calib.shape) if calib is not None else None}
    t0 = time.perf_counter()
    unit = {"ffn": "FFN channels", "heads": "GQA groups", "layers": "decoder layers"}.get(method,
                                                                                         "decoder linear weights")
    if method in ("magnitude", "wanda", "nm"):
        achieved = _unstructured(p, method, sparsity, calib, n, m)
        if method == "nm":
            cfg.update({"n": n, "m": m, "score": score})
    elif method == "ffn":
        achieved = _ffn(p, sparsity, calib)
        cfg["intermediate_size"] = p.config.intermediate_size
    elif method == "heads":
        achieved = _heads(p, sparsity, calib, heads)
        sparsity = achieved if sparsity is None else sparsity
        cfg.update({"num_attention_heads": p.config.num_attention_heads,
                    "num_key_value_heads": p.config.num_key_value_heads})
    else:
        achieved, dropped = _drop_layers(p, sparsity, calib)
        cfg.update({"dropped_layers": dropped, "num_hidden_layers": p.config.num_hidden_layers})
    seconds = time.perf_counter() - t0
    p.eval()
    p.labkit_prune = PruneInfo(method, sparsity, achieved, unit, before, _params(p), _nonzero(p), weight_bytes(p),
                               seconds, cfg)
    return p


# ---------------------------------------------------------------- sparse kernels for the zeros

class SparseLinear(nn.Module):
    """A linear layer whose weight is stored in CSR (compressed sparse rows, int32 indices) and multiplied by
    torch's sparse kernel: it reads and multiplies only the nonzeros, plus an index for each one."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        """`weight`: dense (converted here) or already CSR (copied)."""
        super().__init__()
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state": known, said here
            warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
            csr = weight.detach() if weight.layout == torch.sparse_csr else weight.detach().to_sparse_csr()
            self.weight = torch.sparse_csr_tensor(csr.crow_indices().int().clone(), csr.col_indices().int().clone(),
                                                  csr.values().clone(), csr.shape,
                                                  check_invariants=False)  # valid: made by torch
        self.bias = None if bias is None else bias.detach()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        y = (self.weight @ x2.T).T  # sparse (out, in) @ dense (in, tokens)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def nbytes(self) -> int:
        w = self.weight
        return sum(t.numel() * t.element_size() for t in (w.values(), w.crow_indices(), w.col_indices()))


def semi_structured_unsupported(device: torch.device | str, dtype: torch.dtype) -> str | None:
    """Why torch's 2:4 kernel (to_sparse_semi_structured) cannot run here, or None if it can."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return ("2:4 semi-structured kernels (torch.sparse.to_sparse_semi_structured, cuSPARSELt/CUTLASS) run on "
                f"NVIDIA GPUs with compute capability 8.0+ (A100, H100, RTX 30xx/40xx) only; this model is on "
                f"{dev.type}")
    cap = torch.cuda.get_device_capability(dev)
    if cap < (8, 0):
        return f"2:4 sparse tensor cores need compute capability 8.0+; this GPU has {cap[0]}.{cap[1]}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"torch's 2:4 kernels take fp16 or bf16 weights here, not {dtype}; cast the model first"
    return None


def to_sparse(model: nn.Module, layout: str = "csr", inplace: bool = False) -> nn.Module:
    """The pruned model with every decoder linear's weight in a sparse `layout` ("csr" or "2:4"), so kernels
    can skip the zeros. Raises PruneSkipped where this machine has no kernel for the layout."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown sparse layout {layout!r}; choose one of {list(LAYOUTS)}")
    first = next(model.parameters())
    if layout == "2:4":
        reason = semi_structured_unsupported(first.device, first.dtype)
        if reason:
            raise PruneSkipped(reason)
    s = model if inplace else copy.deepcopy(model)
    for layer in _layers(s):
        for name, lin in list(_linears(layer).items()):
            if layout == "csr":
                swap(layer, name, lambda lin: SparseLinear(lin.weight, lin.bias))
            else:  # pragma: no cover - needs an sm80+ GPU
                from torch.sparse import to_sparse_semi_structured

                lin.weight = nn.Parameter(to_sparse_semi_structured(lin.weight.detach()), requires_grad=False)
    return s.eval()
