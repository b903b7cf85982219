"""Notebook 07's figure: each measured stage's output throughput, idle TTFT and TTFT under the trace as bars,
in stacking order, so the step each technique adds is seen at once. The notebook shows and saves it under the
name "07_stages" (`lesson.show`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

PANELS = (("output_throughput", "output tokens/s (higher is better)"),
          ("ttft_idle_ms", "idle TTFT, ms (lower is better)"),
          ("ttft_p50_ms", "TTFT p50 under the trace, ms"))


def plot_stages(table: pd.DataFrame):
    """Three bar panels (PANELS) over the stages whose status is "ok" (skipped stages have no numbers)."""
    import matplotlib.pyplot as plt

    ok = table[table["status"] == "ok"]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(13, 3.6))
    for ax, (column, title) in zip(axes, PANELS, strict=True):
        ok.plot.bar(x="stage", y=column, ax=ax, legend=False, title=title)
        ax.tick_params(axis="x", rotation=20)
        ax.set_xlabel("")
    return fig
