"""Checking the parameters a notebook receives from papermill, so a bad one fails at once, clearly."""

from __future__ import annotations

PRESETS = ("ci", "full")


class ParamError(ValueError):
    """A notebook parameter is wrong; the message names the valid choices."""


def check_preset(preset) -> str:
    if preset not in PRESETS:
        raise ParamError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}")
    return preset


def pick(preset: str, **by_preset):
    """The value for this preset: pick(preset, ci=64, full=512)."""
    check_preset(preset)
    missing = [p for p in PRESETS if p not in by_preset]
    if missing:
        raise TypeError(f"pick() needs a value for every preset; missing {missing}")
    return by_preset[preset]


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a CUDA GPU is usable, else 'cpu'. Asking for 'cuda' without one is an error."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if str(device).startswith("cuda"):
        if not torch.cuda.is_available():
            raise ParamError(f"device {device!r} asked for, but CUDA is not available here "
                             "(no GPU, or torch is a CPU build); use device='cpu' or 'auto'")
        return str(device)
    raise ParamError(f"unknown device {device!r}; choose 'auto', 'cpu' or 'cuda'")


def check_type(name: str, value, *types):
    """Reject a parameter of the wrong type with a message naming the expected type."""
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        want = " or ".join(t.__name__ for t in types)
        raise ParamError(f"parameter {name} must be {want}, got {type(value).__name__} {value!r}")
    return value
