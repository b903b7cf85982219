"""Notebook 05's parameters cell, checked at once, and the model it serves."""

from __future__ import annotations

from labkit.lessons.batching.servers import SERVERS


def resolve_parameters(preset: str, *, device: str, dtype: str, seed: int, layers, n_requests, prompt_len: int,
                       output_len, rate, burstiness: float, max_batch: int, max_num_batched_tokens: int, servers,
                       slo_ttft_ms, slo_tpot_ms, rates, rounds) -> dict:
    """Notebook 05's parameters cell, checked at once (labkit.core.params): a bad value fails naming what is valid,
    and a size left None takes the preset's value. Returns the resolved values by name, `slo` as bench wants it."""
    from labkit.core.params import check, default, resolve_device

    check("dtype", dtype, str, choices=("fp32", "bf16", "fp16"))
    for name, value, lo in [("seed", seed, 0), ("prompt_len", prompt_len, 1), ("max_batch", max_batch, 1),
                            ("max_num_batched_tokens", max_num_batched_tokens, max_batch)]:
        check(name, value, int, min=lo)
    check("burstiness", burstiness, float, min=1e-3)
    return {
        "device": resolve_device(device),
        "layers": default("layers", layers, preset, ci=1, full=8, min=1),
        "n_requests": default("n_requests", n_requests, preset, ci=12, full=32, min=2),
        "output_len": tuple(default("output_len", output_len, preset, ci=(16, 64), full=(16, 256),
                                    kind=(list, tuple))),
        "rate": default("rate", rate, preset, ci=4.0, full=4.0, kind=float, min=1e-3),
        "servers": list(default("servers", servers, preset, ci=SERVERS, full=SERVERS, kind=(list, tuple),
                                choices=SERVERS)),
        "rounds": default("rounds", rounds, preset, ci=1, full=3, min=1),
        "rates": list(default("rates", rates, preset, ci=[1.0, 4.0], full=[0.5, 1.0, 2.0, 4.0, 8.0], kind=list)),
        "slo": {"ttft": check("slo_ttft_ms", slo_ttft_ms, float, min=0),
                "tpot": check("slo_tpot_ms", slo_tpot_ms, float, min=0)},
    }


def load_model(name: str, dtype: str, device: str, layers: int, seed: int, prepack: bool, max_batch: int):
    """The served model; with `prepack`, its fp32 linears on oneDNN's prepacked weights for `max_batch` rows
    (labkit.techniques.kernels raises with the reason where oneDNN cannot run it)."""
    from labkit.core import models
    from labkit.core.params import check
    from labkit.techniques import kernels

    m = models.load(name, dtype=dtype, device=device, layers=layers, seed=seed)
    return kernels.prepack_linears(m, rows_hint=max_batch) if check("prepack", prepack, bool) else m

