"""The figures notebook 06 shows: peak memory and time against length (log-log, attention op and whole
prefill side by side) and the KV cache against context next to the weights.

Drawing lives here, apart from the measuring, so the notebook only calls `lesson.show(kx.plot_...(...), name)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labkit.core.models import shape
from labkit.core.units import plain_log_ticks
from labkit.lessons.kernels.attention import growth
from labkit.techniques import kernels

if TYPE_CHECKING:
    import pandas as pd


def _panel(ax, df: pd.DataFrame, key: str, value: str, ylabel: str, title: str) -> None:
    """One log-log panel: `value` against n per `key` (backend or attention), a line style per layout (solid:
    the first, dashed: the second), ticks at the measured lengths."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    ok = df[(df["status"] == "ok") & df[value].notna()] if value in df else df.iloc[0:0]
    col = "layout" if "layout" in ok else "model"
    layouts = list(dict.fromkeys(ok[col]))
    names = list(dict.fromkeys(ok[key]))
    for li, lay in enumerate(layouts):
        for name, g in ok[ok[col] == lay].groupby(key, sort=False):
            ax.plot(g["n"], g[value], marker="o", ls=("-", "--", ":")[li % 3], color=f"C{names.index(name)}",
                    label=name if li == 0 else None)
    handles = [Line2D([], [], color=f"C{i}", marker="o", label=n) for i, n in enumerate(names)]
    handles += [Line2D([], [], color="k", ls=("-", "--", ":")[i % 3], label=lay) for i, lay in enumerate(layouts)]
    ax.set(xscale="log", yscale="log", xlabel="sequence length n (tokens)", ylabel=ylabel, title=title)
    ns = sorted(ok["n"].unique())
    ax.set_xticks(ns, [f"{n:,}" for n in ns])
    ax.xaxis.set_minor_formatter(NullFormatter())
    plain_log_ticks(ax)  # 1, 10, 100, with 2s and 5s between: readable on a narrow panel
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(handles=handles, fontsize=7)


def plot_memory(op: pd.DataFrame, prefill: pd.DataFrame | None = None):
    """Peak memory against sequence length, log-log: the attention op per backend (left; dashed: the second
    layout), the whole prefill per attention implementation (right). The title gives the measured growth."""
    import matplotlib.pyplot as plt

    panels = [(op, "backend", "attention op")] + ([(prefill, "attention", "whole prefill (weights excluded)")]
                                                  if prefill is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(10, 4.4), squeeze=False)
    for ax, (df, key, title) in zip(axes[0], panels, strict=True):
        _panel(ax, df, key, "peak_MiB", "peak memory (MiB)", title)
    first = op[(op["status"] == "ok") & (op["layout"] == op["layout"].iloc[0])]
    gr = growth(first, "peak_MiB")
    fused = [b for b in gr if b in kernels.FUSED]
    if "eager" in gr and fused:
        fig.suptitle(f"Peak memory against length, measured: eager grows as n^{gr['eager']:.2f}, "
                     f"{fused[0]} as n^{gr[fused[0]]:.2f} (longest two lengths)")
    fig.tight_layout()
    return fig


def plot_time(op: pd.DataFrame, prefill: pd.DataFrame | None = None):
    """Median time against length, log-log: attention op (left), whole prefill (right)."""
    import matplotlib.pyplot as plt

    panels = [(op, "backend", "attention op")] + ([(prefill, "attention", "whole prefill")] if prefill is not None
                                                  else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(10, 4.4), squeeze=False)
    for ax, (df, key, title) in zip(axes[0], panels, strict=True):
        _panel(ax, df, key, "ms", "median time (ms)", title)
    fig.suptitle("Time against length: where a fused kernel pays")
    fig.tight_layout()
    return fig


def plot_kv(ctx: pd.DataFrame, measured: pd.DataFrame | None = None):
    """KV cache of the full models against context (formula lines, log-log) with the measured points scaled to
    every layer, and each model's weights as a dotted level: where the cache outgrows the model."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for i, (name, g) in enumerate(ctx.groupby("shape", sort=False)):
        ax.plot(g["context"], g["kv_GiB"], color=f"C{i}", label=f"{name} KV cache (formula)")
        ax.axhline(g["weights_GiB"].iloc[0], color=f"C{i}", ls=":", lw=1)
        if measured is not None:
            m = measured[measured["shape"] == name]
            ax.scatter(m["tokens"], m["full_model_MiB"] / 1024, color=f"C{i}", zorder=3,
                       label=f"{name} measured (1 layer x {shape(name).num_hidden_layers})")
    ax.set(xscale="log", yscale="log", xlabel="context (tokens, batch 1)", ylabel="GiB (16-bit)",
           title="KV cache against context: formula (lines), measured (points); dotted: the weights")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return fig
