"""What notebook 03 prunes: a `Variant` is one pruned model (one or more `labkit.techniques.prune` steps in
order), `variants` the lesson's list of them. Kept apart from the loops that measure them so that the quality
loop, the speed loop and the record all name a cut the same way (`Variant.label`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from labkit.techniques.prune import STRUCTURED, prune


@dataclass
class Variant:
    """One pruned model: `steps` of (method, sparsity, cfg) applied in order (one step for most; a mixed
    structured cut has two). `label` names its row in every table."""

    label: str
    steps: list[tuple[str, float | None, dict]] = field(default_factory=list)

    @classmethod
    def of(cls, method: str, sparsity: float | None = None, label: str | None = None, **cfg) -> Variant:
        if label is None:
            label = f"{method} {sparsity:.0%}" if sparsity is not None else (
                f"{cfg.get('n', 2)}:{cfg.get('m', 4)} ({cfg.get('score', 'magnitude')})")
        return cls(label, [(method, sparsity, cfg)])

    @property
    def kind(self) -> str:
        methods = {m for m, _, _ in self.steps}
        if methods <= set(STRUCTURED):
            return "structured"
        return "semi-structured" if methods == {"nm"} else "unstructured"

    def apply(self, model: nn.Module, calib: torch.Tensor | None, inplace: bool = False) -> nn.Module:
        """The pruned copy (or `model` itself, pruned in place); `labkit_prune_steps` keeps every step's
        PruneInfo."""
        infos, out = [], model
        for i, (method, sparsity, cfg) in enumerate(self.steps):
            out = prune(out, method, sparsity, calib=calib, inplace=inplace or i > 0, **cfg)
            infos.append(out.labkit_prune)
        out.labkit_prune_steps = infos
        return out


def variants(sparsities: list[float], structured: dict[str, float], nm_scores: tuple[str, ...] = ("magnitude",
             "wanda")) -> list[Variant]:
    """The lesson's variants: magnitude and Wanda at each sparsity, 2:4 with each score, and each structured
    method at its sparsity ({"ffn": 0.4, "heads": 0.4, "layers": 0.17}; a key "ffn+heads" takes a pair)."""
    out = [Variant.of(m, s) for m in ("magnitude", "wanda") for s in sparsities]
    out += [Variant.of("nm", score=s) for s in nm_scores]
    for key, s in structured.items():
        if "+" in key:
            (a, b), (sa, sb) = key.split("+"), s
            out.append(Variant(f"{a} {sa:.0%} + {b} {sb:.0%}", [(a, sa, {}), (b, sb, {})]))
        else:
            out.append(Variant.of(key, s))
    return out


def describe_achieved(model: nn.Module) -> str:
    """What every step of a pruned model removed, in words ("40.0% of weights + ...")."""
    return " + ".join(f"{i.achieved:.1%} of {i.unit}" for i in model.labkit_prune_steps)


def same_cut(a: str | None, b: str | None, tolerance: float = 0.02) -> bool:
    """Whether two `describe_achieved` texts (the trained model's cut and the speed model's) removed the same share
    of the same units at every step, within `tolerance` (2 percentage points): a quality measured on one cut and a
    speed measured on another are not one trade-off (50% of a 2-layer model's layers is not 17% of a 6-layer one's)."""
    import re

    if not isinstance(a, str) or not isinstance(b, str):
        return False
    parse = [re.findall(r"([\d.]+)% of ([^+]+?)\s*(?:\+|$)", x) for x in (a, b)]
    if not parse[0] or len(parse[0]) != len(parse[1]):
        return a.strip() == b.strip()
    return all(ua == ub and abs(float(pa) - float(pb)) <= 100 * tolerance
               for (pa, ua), (pb, ub) in zip(*parse, strict=True))
