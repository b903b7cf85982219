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


def default(name: str, value, preset: str, *, ci, full, kind: type | tuple[type, ...] = int, min=None, max=None,
            choices=None):
    """A notebook parameter that may be left as None: None takes the preset's value (`ci=`/`full=`); anything
    else is checked at once (type, range, choices) and kept, so `layers=0` is an error, never quietly 2."""
    if value is None:
        return pick(preset, ci=ci, full=full)
    return check(name, value, kind, min=min, max=max, choices=choices)


def check(name: str, value, kind: type | tuple[type, ...] = int, *, min=None, max=None, choices=None):
    """Type, range and choices of one parameter; the error names what is valid. A list/tuple parameter is
    checked element by element against `choices`."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and int not in kinds:
        kinds = (*kinds, int)  # 2 is a fine float
    if choices is not None and isinstance(value, (list, tuple)) and list not in kinds and tuple not in kinds:
        raise ParamError(f"parameter {name} must be one of {list(choices)}, got the list {value!r}")
    check_type(name, value, *kinds)
    if choices is not None:
        items = value if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in items if v not in choices]
        if bad:
            raise ParamError(f"parameter {name}: {bad if len(bad) > 1 else bad[0]!r} is not valid; choose from "
                             f"{list(choices)}")
    if min is not None and value < min:
        raise ParamError(f"parameter {name} must be >= {min}, got {value!r}")
    if max is not None and value > max:
        raise ParamError(f"parameter {name} must be <= {max}, got {value!r}")
    return value
