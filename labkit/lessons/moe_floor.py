"""Notebook 01's demonstration that a mixture-of-experts model's decode floor is its *active* bytes: a MoE shape
(Qwen3-30B-A3B: 128 experts, 8 routed per token) and a dense model of the same total size (one MLP as wide as all
experts: models.dense_equivalent) decode side by side, batch 1, in rotating rounds; each is set against its
roofline floor (roofline.decode_floor reads only the routed experts' weights of a MoE model) and the measured
dense/MoE ratio against the floors' ratio.

Both are built with the shape's layer dimensions, `layers` decoder layers, seeded random weights and a vocabulary
of SMALL_VOCAB tokens: the embedding and output head of the real vocabulary (152K x 2048) would be the same bytes in
both models and would hide the layers' difference at a few layers. The MoE model runs transformers' own experts
module ("eager": a loop over the experts the token routed to, each a matmul on a view of the stored experts).
Measured on an AVX2-only EPYC (2 cores, fp32, 1 and 3 layers, the difference per layer): MoE 16.6 ms, dense 146 ms
per layer, a ratio of 8.8x against the floors' 10.9x; in bf16 the small experts' matmuls ran further from their
floor (4.3x), so fp32 is the default.
"""

from __future__ import annotations

from dataclasses import replace

from labkit.core import models, roofline

MOE_SHAPE = "qwen3-30b-a3b"
SMALL_VOCAB = 256  # the same tiny embedding and head in both models: what is compared is the layers


def shapes(name: str = MOE_SHAPE) -> tuple[models.ShapeSpec, models.ShapeSpec]:
    """The MoE shape and its dense equivalent, both with SMALL_VOCAB tokens."""
    spec = models.shape(name)
    if not spec.num_experts:
        raise models.ModelError(f"{name} is not a mixture-of-experts shape; take one of "
                                f"{[s for s, v in models.SHAPES.items() if v.num_experts]}")
    small = replace(spec, vocab_size=SMALL_VOCAB)
    return small, models.dense_equivalent(small)


def _build(spec: models.ShapeSpec, layers: int, dtype: str, seed: int, device: str):
    """`spec` with `layers` layers; a MoE model's experts through transformers' "eager" loop (each routed expert
    a matmul on a view of the stacked weights: what reads only the routed experts' bytes on a CPU)."""
    return models.build(spec, layers, dtype, device, seed, experts_implementation="eager" if spec.num_experts
                        else None)


def measure(hw: roofline.Card, name: str = MOE_SHAPE, layers: int = 1, dtype: str = "fp32", tokens: int = 9,
            rounds: int = 3, seed: int = 0, device: str = "cpu", progress: bool = True) -> dict:
    """Batch-1 decode of the MoE shape and its dense equivalent, `tokens` tokens after a 16-token prompt, in
    `rounds` rotating rounds. Returns {"rows": one per model (parameters, MiB read per token, floor, measured,
    fraction), "floor_ratio", "ratio" (bench.Ratio: dense time / MoE time per round)}."""
    import torch

    from labkit.core.bench import generate_timed, run_rounds
    from labkit.core.floors import of_floors

    moe_spec, dense_spec = shapes(name)
    built = {"MoE": (moe_spec, _build(moe_spec, layers, dtype, seed, device)),
             "dense, same total": (dense_spec, _build(dense_spec, layers, dtype, seed, device))}
    ids = models.prompt_ids(16, vocab_size=SMALL_VOCAB, seed=seed).to(device)

    def call(m):
        return lambda: {"tpot": generate_timed(m, ids, tokens)[0].tpot}

    with torch.inference_mode():
        r = run_rounds({k: call(m) for k, (_, m) in built.items()}, rounds, progress=progress,
                       desc="MoE vs dense rounds")
    fl = {k: roofline.decode_floor(s, dtype, hw, 16 + tokens // 2, layers=layers) for k, (s, _) in built.items()}
    held = of_floors([r.median(k, "tpot") for k in built], [fl[k] for k in built], source=hw.source or "the card")
    rows = []
    for (k, (s, _)), h in zip(built.items(), held, strict=True):
        rows.append({"model": k, "params_M": s.params(layers) / 1e6, "active_params_M": s.active_params(layers) / 1e6,
                     "read_MiB_per_token": fl[k].bytes / 2**20, "floor_ms": h.floor_s * 1e3,
                     "decode_ms_per_token": r.median(k, "tpot") * 1e3, **h.fields("fraction_of_floor")})
    moe, dense = list(built)
    return {"rows": rows, "floor_ratio": fl[dense].seconds / fl[moe].seconds, "ratio": r.ratio(dense, moe, "tpot"),
            "layers": layers, "dtype": dtype, "experts": (moe_spec.experts_per_token, moe_spec.num_experts)}


def lines(result: dict) -> list[str]:
    """The comparison in words, from the numbers: the floors' ratio, the measured one, and how close it came."""
    fr, ratio = result["floor_ratio"], result["ratio"]
    lo, hi = min(ratio.values), max(ratio.values)
    share = ratio.value / fr
    verdict = ("within 1.5x of what the active bytes predict" if 1 / 1.5 <= share <= 1.5 else
               "further than 1.5x from what the active bytes predict: the MoE step's many small kernels (routing, "
               "one matmul per routed expert) cost more than their bytes here")
    return [f"floors: the dense model of the same total size reads {fr:.1f}x the bytes per token of the MoE model "
            f"({result['layers']} layer(s), {result['dtype']}: only the {result['experts'][0]} routed experts of "
            f"{result['experts'][1]} are read)",
            f"measured: the MoE model decoded {ratio.value:.1f}x faster (rounds {lo:.1f}-{hi:.1f}x), "
            f"{share:.0%} of the floors' ratio: {verdict}"]
