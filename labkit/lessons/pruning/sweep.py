"""Where a sparse kernel starts to pay: one weight matrix of a real model's shape, magnitude-pruned from 50% to
99%, through torch's CSR kernel against the dense one at decode (1 token) and prefill (512 tokens), side by side
in rotating rounds with the roofline's prediction (`sparse_sweep`), and the sparsity from which CSR keeps
winning (`crossover`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from labkit.core.units import MiB
from labkit.techniques.prune import SparseLinear, prune_weight_

if TYPE_CHECKING:
    import pandas as pd

    from labkit.core.roofline import Card


def sparse_sweep(out_features: int, in_features: int, sparsities: list[float], *, hw: Card,
                 tokens: tuple[int, ...] = (1, 512), rounds: int = 3, seed: int = 0, device: str = "cpu",
                 working_set_mib: float = 1024, progress: bool = True) -> pd.DataFrame:
    """One fp32 weight matrix of a real model's shape, magnitude-pruned to each sparsity, multiplied by the
    dense kernel (F.linear) and by torch's CSR kernel (labkit.techniques.prune.SparseLinear) side by side in rotating
    rounds, for each token count (1: a decode step, 512: a prefill). A decode step of a real model reads
    every layer's weights, far more than any cache, so at 1 token each call cycles through enough copies of
    the matrix to read `working_set_mib` (a server CPU's L3 can hold a whole matrix and would flatter both
    kernels); times are per matrix. With each measurement, the roofline's prediction: CSR moves 8 bytes per
    nonzero (value + int32 column index) where dense moves 4 per weight, and does 2 FLOPs per nonzero per
    token where dense does 2 per weight."""
    import math

    import pandas as pd
    from tqdm.auto import tqdm

    from labkit.core.bench import run_rounds
    from labkit.core.floors import of_floors
    from labkit.core.roofline import Floor

    g = torch.Generator().manual_seed(seed)
    w0 = (torch.randn(out_features, in_features, generator=g) * 0.02).to(device)
    bw, peak = hw.bandwidth_gbps * 1e9, hw.peak("fp32")
    rows = []

    def floor(nbytes: float, flops: float) -> Floor:
        return Floor("matmul", nbytes, flops, nbytes / bw, flops / peak if peak else None)

    bar = tqdm([(s, t) for s in sparsities for t in tokens], desc="dense vs CSR", disable=not progress)
    for s, t in bar:
        w = w0.clone()
        prune_weight_(w, "magnitude", s)
        csr = SparseLinear(w)
        copies = max(1, math.ceil(working_set_mib * MiB / (4 * w.numel()))) if t == 1 else 1
        ws = [w] + [w.clone() for _ in range(copies - 1)]  # distinct memory: no copy can hit another's cache lines
        cs = [csr] + [SparseLinear(csr.weight) for _ in range(copies - 1)]
        x = torch.randn(t, in_features, generator=g).to(device)
        nnz = int(csr.weight.values().numel())

        def dense(ws=ws, x=x) -> None:
            for m in ws:
                nn.functional.linear(x, m)

        def sparse(cs=cs, x=x) -> None:
            for c in cs:
                c(x)

        with torch.inference_mode():
            r = run_rounds({"dense": dense, "csr": sparse}, rounds, device=device, progress=False)
        del ws, cs
        act = 4 * t * (in_features + out_features)
        fd = floor(4 * w.numel() + act, 2 * t * w.numel())
        fc = floor(csr.nbytes() + act, 2 * t * nnz)
        dense_s, csr_s = r.median("dense") / copies, r.median("csr") / copies
        ratio = r.ratio("dense", "csr")
        rows.append({"sparsity": s, "tokens": t, "phase": "decode" if t == 1 else f"prefill ({t} tokens)",
                     "copies": copies, "dense_ms": 1e3 * dense_s, "csr_ms": 1e3 * csr_s, "csr_x": ratio.value,
                     "csr_words": ratio.words(), "csr_faster": ratio.conclusive and ratio.value > 1,
                     "predicted_csr_x": fd.seconds / fc.seconds, "csr_MiB": csr.nbytes() / MiB,
                     "dense_MiB": 4 * w.numel() / MiB, "_floors": (fd, fc)})
    both = [(r, key, at) for key, at in (("dense", 0), ("csr", 1)) for r in rows]  # one run: one best rate each
    fr = of_floors([r[f"{key}_ms"] / 1e3 for r, key, _ in both], [r["_floors"][at] for r, _, at in both])
    for (r, key, _), f in zip(both, fr, strict=True):  # a beaten floor is re-derived from this run's best rate
        r.update(f.fields(f"{key}_of_floor"))
    return pd.DataFrame([{k: v for k, v in r.items() if k != "_floors"} for r in rows])


def crossover(sweep: pd.DataFrame, tokens: int, column: str = "csr_faster") -> float | None:
    """The lowest sparsity from which the sparse kernel wins at every higher sparsity swept (measured:
    `csr_faster`, conclusively faster; or predicted: pass column="predicted")."""
    rows = sweep[sweep["tokens"] == tokens].sort_values("sparsity")
    wins = (rows["predicted_csr_x"] > 1).tolist() if column == "predicted" else rows[column].tolist()
    found = None
    for s, ok in zip(rows["sparsity"].tolist()[::-1], wins[::-1], strict=True):
        if not ok:
            break
        found = s
    return found
