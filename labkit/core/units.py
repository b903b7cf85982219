"""Numbers and names as the course writes them: bytes in KiB/MiB/GiB, dtype names, ratio words, log-axis ticks.

Every lesson prints sizes, names dtypes and turns a measured ratio into a sentence; one copy of each small helper
here keeps those words the same across notebooks (and a fix lands everywhere at once).
"""

from __future__ import annotations

import torch

KiB, MiB, GiB = 2**10, 2**20, 2**30

# torch dtype -> the short name the course uses in tables, records and parameters
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int8: "int8"}
# and back: "fp32" -> torch.float32 (int8 included, for the integer matmul probes)
TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """"fp32", "bf16", "fp16", "int8"; any other dtype by torch's own name without the "torch." prefix."""
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def mib(n: float) -> float:
    """Bytes in MiB (2**20)."""
    return n / MiB


def gib(n: float) -> float:
    """Bytes in GiB (2**30)."""
    return n / GiB


def number(v: float) -> str:
    """A number as a person reads it: thousands separators, fewer decimals the larger it is."""
    a = abs(v)
    return f"{v:,.0f}" if a >= 100 else f"{v:,.1f}" if a >= 10 else f"{v:.2f}" if a >= 0.01 else f"{v:.2g}"


def fmt_count(n: float) -> str:
    """A parameter or token count in the largest unit it reaches: "6.74 B", "12.3 M", "4.10 K", "512"."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{number(n / size)} {unit}"
    return f"{n:,.0f}"


def fmt_bytes(n: float | None) -> str:
    """A byte count in the largest binary unit it reaches: "886 MiB", "3.00 GiB", "512 B"; None as "–"."""
    if n is None:
        return "–"
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= size:
            return f"{number(n / size)} {unit}"
    return f"{n:,.0f} B"


def pct_beside(value: float, bar: float, sign: bool = True) -> str:
    """`value` as a percentage with one decimal, or more where one would print it equal to `bar` while it is not
    (+1.24% against "at most 1.2%" would read "+1.2% ... not met")."""
    plus = "+" if sign else ""
    for digits in (1, 2, 3):
        if value == bar or f"{value:.{digits}%}" != f"{bar:.{digits}%}":
            break
    return f"{value:{plus}.{digits}%}"


def than(words: str, ref: str, ms: float | None = None) -> str:
    """A `Ratio.words()` against `ref`, for a sentence: "2.50x faster than eager", "1.27x slower than one process
    (89.2 ms)"; inside the noise "no different from eager: inconclusive (...)", never "inconclusive than"."""
    at = "" if ms is None else f" ({ms:.1f} ms)"
    if words.startswith("inconclusive"):
        return f"no different from {ref}{at}: {words}"
    return f"{words} than {ref}{at}"


def tick_label(v: float, _pos=None) -> str:
    """A log axis's tick as a plain number (1,000, 20, 0.5), not 10^3 or 2x10^1."""
    return f"{v:,.0f}" if v >= 1 else f"{v:g}"


def plain_log_ticks(ax, axis: str = "y", minor: str = "25", minor_size: float | None = None) -> None:
    """Label a matplotlib log axis (`axis` "x" or "y") with plain numbers (`tick_label`): every decade, and the
    minor ticks whose first digit is in `minor` ("25": 20, 50, 200, ...; "" none; "123456789" every one), so a
    narrow panel stays readable. `minor_size`: the font size of the minor labels (None: matplotlib's)."""
    from matplotlib.ticker import FuncFormatter

    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_formatter(FuncFormatter(tick_label))
    target.set_minor_formatter(FuncFormatter(lambda v, _: tick_label(v) if f"{v:e}"[0] in minor else ""))
    if minor_size is not None:
        ax.tick_params(axis=axis, which="minor", labelsize=minor_size)
