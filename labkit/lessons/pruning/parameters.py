"""Notebook 03's parameters, resolved and checked at once so that a bad one fails before anything is measured:
`settings` fills the preset's defaults and picks the machine's roofline card, `check_parameters` checks the
pruning amounts (every sparsity in [0, 1), structured cuts among labkit.techniques.prune.STRUCTURED).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from labkit.techniques.prune import STRUCTURED

if TYPE_CHECKING:
    from labkit.core.roofline import Card


@dataclass(frozen=True)
class Settings:
    """The resolved parameters the later cells of notebook 03 use (None in the parameters cell: the preset's)."""

    device: str
    layers: int
    sweep_sparsities: list[float]
    prompt_len: int
    new_tokens: int
    repeats: int
    recovery_steps: int
    ppl_tokens: int | None  # held-out tokens for perplexity (None: all of them)
    n_calib: int  # calibration sequences
    calib_len: int  # tokens per calibration sequence
    n_prompts: int  # prompts for greedy-token agreement
    hw: Card  # the roofline card of this machine
    hw_source: str

    def card_line(self) -> str:
        return (f"roofline card: {self.hw.name} from {self.hw_source}: {self.hw.bandwidth_gbps:.1f} GB/s, "
                f"fp32 {self.hw.peak('fp32') / 1e9:.0f} GFLOP/s")


def settings(preset: str, *, sparsities, structured: dict, sweep_sparsities=None, device: str = "auto",
             seed: int = 0, layers: int | None = None, prompt_len: int | None = None, new_tokens: int | None = None,
             repeats: int | None = None, recovery_steps: int | None = None) -> Settings:
    """Notebook 03's parameters resolved for `preset`: the device ('auto' -> cuda where usable), the preset's value
    for each one left None, every one checked (labkit.core.params: a bad one raises ParamError naming what is
    valid), and the roofline card of the machine (planner.machine_card: notebook 01's profile where there is one).
    The speed model keeps at least 2 layers: every cut stays in memory at once."""
    from labkit.core import params, planner

    device = params.resolve_device(device)
    params.check("seed", seed, int)
    sweep_sparsities = sweep_sparsities or params.pick(preset, ci=[0.5, 0.8, 0.9, 0.95, 0.99],
                                                       full=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99])
    check_parameters(sparsities, structured, sweep_sparsities)
    resolved = {"layers": params.default("layers", layers, preset, ci=2, full=2, min=2),
                "prompt_len": params.default("prompt_len", prompt_len, preset, ci=128, full=512, min=1),
                "new_tokens": params.default("new_tokens", new_tokens, preset, ci=6, full=32, min=2),
                "repeats": params.default("repeats", repeats, preset, ci=2, full=5, min=1),
                "recovery_steps": params.default("recovery_steps", recovery_steps, preset, ci=16, full=200, min=1)}
    ppl_tokens, n_calib, calib_len, n_prompts = params.pick(preset, ci=(2048, 4, 256, 4), full=(None, 32, 512, 16))
    hw, hw_source = planner.machine_card(device)
    return Settings(device=device, sweep_sparsities=sweep_sparsities, **resolved, ppl_tokens=ppl_tokens,
                    n_calib=n_calib, calib_len=calib_len, n_prompts=n_prompts, hw=hw, hw_source=hw_source)


def check_parameters(sparsities, structured, sweep_sparsities) -> None:
    """The notebook's pruning parameters, checked at once: every sparsity in [0, 1), structured keys among
    labkit.techniques.prune.STRUCTURED (or two joined by '+', with a pair of sparsities)."""
    from labkit.core.params import ParamError
    from labkit.techniques.prune import check_sparsity

    def sparse(name: str, value) -> None:
        try:
            check_sparsity(value)
        except ValueError as e:
            raise ParamError(f"parameter {name}: {e}") from None

    for name, values in (("sparsities", sparsities), ("sweep_sparsities", sweep_sparsities)):
        if not isinstance(values, (list, tuple)) or not values:
            raise ParamError(f"parameter {name} must be a non-empty list of sparsities in [0, 1), got {values!r}")
        for v in values:
            sparse(name, v)
    if not isinstance(structured, dict):
        raise ParamError(f"parameter structured must be a dict like {{'ffn': 0.4, 'heads': 0.4}}, got {structured!r}")
    for key, value in structured.items():
        parts = key.split("+")
        if any(p not in STRUCTURED for p in parts) or len(parts) > 2:
            raise ParamError(f"parameter structured: unknown cut {key!r}; choose from {list(STRUCTURED)} or two "
                             "joined by '+' (e.g. 'ffn+heads' with a pair of sparsities)")
        values = value if len(parts) == 2 else [value]
        if len(parts) == 2 and (not isinstance(value, (list, tuple)) or len(value) != 2):
            raise ParamError(f"parameter structured: {key!r} takes a pair of sparsities, got {value!r}")
        for v in values:
            sparse(f"structured[{key!r}]", v)
