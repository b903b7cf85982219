"""Notebook 01's figure: what the probes measured, memory-bound rates beside compute-bound ones.

The probes themselves live in labkit.core.probes (core draws no lesson figures); this module turns a list of
them into the two-panel chart notebook 01 shows as "01_probes".
"""

from __future__ import annotations

from labkit.core.probes import Probe


def plot_probes(probes: list[Probe]):
    """Two panels: GB/s of the streaming and matrix-vector probes (decode's currency) and GFLOP/s of the
    matrix-matrix probes (prefill's), per device and dtype. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    done = [p for p in probes if not p.skipped]
    bw = [p for p in done if p.name != "matmul"]
    mm = [p for p in done if p.name == "matmul"]
    left.barh([f"{p.device} {p.name} {p.dtype}" for p in bw], [p.gb_per_s for p in bw], color="tab:blue")
    left.set_xlabel("GB/s (bytes read + written per second)")
    left.set_title("memory-bound: streaming and matrix-vector")
    right.barh([f"{p.device} {p.dtype}" for p in mm], [p.gflop_per_s for p in mm], color="tab:orange")
    right.set_xlabel("GFLOP/s (int8: GOP/s)")
    right.set_title(f"compute-bound: matrix-matrix ({mm[0].shape if mm else ''})", fontsize=9)
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
