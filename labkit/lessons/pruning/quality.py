"""Quality of each pruned variant on the trained (embedded) model: held-out perplexity, greedy-token agreement,
parameters and bytes (`evaluate`); and why Wanda may or may not beat magnitude here: how uneven each linear's
input channels are (`activation_spread`) and a synthetic layer with outlier channels (`outlier_demo`).
A variant this machine cannot prune is a row "skipped: <reason>".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from labkit.core.models import weight_bytes
from labkit.core.units import MiB
from labkit.lessons.pruning.variants import Variant, describe_achieved
from labkit.techniques.prune import PruneSkipped, prune_weight_

if TYPE_CHECKING:
    import pandas as pd


def evaluate(model: nn.Module, tokenizer, plan: list[Variant], *, calib: torch.Tensor, text: str,
             max_tokens: int | None = 4096, prompts: list[str] | None = None, new_tokens: int = 16,
             keep: tuple[str, ...] = (), progress: bool = True) -> tuple[pd.DataFrame, dict[str, nn.Module]]:
    """Quality of each variant on the trained model: held-out perplexity and its change against the dense
    model, greedy-token agreement with it (teacher-forced, labkit.core.quality), parameters (all, and nonzero) and
    bytes. Returns the table and the pruned models whose labels are in `keep` (for the recovery fine-tune)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from labkit.core.quality import greedy_agreement, perplexity

    kept: dict[str, nn.Module] = {}
    dense_ppl = perplexity(model, tokenizer, text, max_tokens=max_tokens)["perplexity"]
    total = sum(p.numel() for p in model.parameters())
    rows = [{"label": "dense", "kind": "dense", "status": "ok", "achieved": "-", "params_M": total / 1e6,
             "nonzero_M": total / 1e6, "MiB": weight_bytes(model) / MiB, "perplexity": dense_ppl,
             "ppl_change": 0.0, "token_agreement": 1.0, "prune_s": 0.0}]
    for v in tqdm(plan, desc="prune + quality", disable=not progress):
        row = {"label": v.label, "kind": v.kind}
        try:
            p = v.apply(model, calib)
        except PruneSkipped as e:
            rows.append({**row, "status": f"skipped: {e}"})
            continue
        info = p.labkit_prune_steps[-1]
        ppl = perplexity(p, tokenizer, text, max_tokens=max_tokens)["perplexity"]
        row.update({"status": "ok", "achieved": describe_achieved(p), "params_M": info.params_after / 1e6,
                    "nonzero_M": info.nonzero_after / 1e6, "MiB": info.bytes / MiB, "perplexity": ppl,
                    "ppl_change": ppl / dense_ppl - 1,
                    "prune_s": sum(i.seconds for i in p.labkit_prune_steps)})
        if prompts:
            row["token_agreement"] = greedy_agreement(model, p, tokenizer, prompts, new_tokens)["token_agreement"]
        rows.append(row)
        if v.label in keep:
            kept[v.label] = p
    return pd.DataFrame(rows), kept


def activation_spread(model: nn.Module, calib: torch.Tensor) -> pd.DataFrame:
    """How uneven the inputs of each kind of linear are: the largest input channel's activation norm over the
    median one, per layer. Wanda's edge over magnitude comes from channels far above the rest."""
    import pandas as pd

    from labkit.techniques.prune import _input_norms, _layers, _linears

    rows = []
    for i, layer in enumerate(_layers(model)):
        names = [n for n in _linears(layer) if not n.endswith(("k_proj", "v_proj", "up_proj"))]  # same inputs
        for name, norm in _input_norms(model, layer, calib, names).items():
            rows.append({"layer": i, "linear": name.split(".")[-1],
                         "max_over_median": float(norm.max() / norm.median())})
    return pd.DataFrame(rows).pivot(index="layer", columns="linear", values="max_over_median")


def outlier_demo(out_features: int = 256, in_features: int = 512, tokens: int = 1024, outliers: int = 8,
                 scale: float = 30.0, sparsity: float = 0.5, seed: int = 0) -> pd.DataFrame:
    """One random linear layer, pruned by magnitude and by Wanda, with even inputs and with a few channels
    `scale` times larger (the emergent outlier features of LLMs above a few billion parameters): the layer's
    relative output error on those inputs. Synthetic, to show when Wanda's activation term matters."""
    import pandas as pd

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g) / in_features**0.5
    rows = []
    for name, boost in (("even inputs", 1.0), (f"{outliers} outlier channels x{scale:g}", scale)):
        x = torch.randn(tokens, in_features, generator=g)
        x[:, :outliers] *= boost
        ref = x @ w.T
        row = {"inputs": name}
        for method in ("magnitude", "wanda"):
            p = w.clone()
            prune_weight_(p, method, sparsity, x_norm=x.norm(dim=0) if method == "wanda" else None)
            row[f"{method} output error"] = float((x @ p.T - ref).norm() / ref.norm())
        rows.append(row)
    return pd.DataFrame(rows)
