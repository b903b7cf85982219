"""The roofline: the fastest a model can possibly run on a machine, from bytes and FLOPs alone.

A step of an LLM must move its bytes (weights, KV cache) through memory and do its FLOPs. Neither can go
faster than the hardware allows, so the floor of a step is max(bytes / bandwidth, FLOPs / peak):
- decode (one new token per sequence) reads every weight once for few FLOPs: memory-bound, floor ~ bytes / BW;
- prefill (hundreds of tokens at once) reuses each weight for every token: compute-bound, floor ~ FLOPs / peak.
Every speed table in the course shows the fraction of this floor a measurement reaches.

Reference cards are datasheet constants (labelled as such); this machine's numbers come from the probes in
labkit.core.hardware, never from a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from labkit.core.models import ShapeSpec
from labkit.core.units import GiB

# Bytes per weight of a decoder-layer linear layer. int8: per-output-channel scales (negligible, not
# counted). int4: group size 128 with an fp16 scale and zero point per group (GPTQ/AWQ layout).
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5 + 4 / 128}
DTYPES = tuple(WEIGHT_BYTES)


def check_dtype(dtype: str) -> str:
    if dtype not in WEIGHT_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {list(DTYPES)}")
    return dtype


def act_bytes(dtype: str) -> int:
    """Bytes of activations and KV cache: fp32 for an fp32 model; 16-bit otherwise (int8/int4 are weight
    formats, the arithmetic and the cache stay 16-bit)."""
    return 4 if check_dtype(dtype) == "fp32" else 2


def _layer_params(spec: ShapeSpec, tokens: int | None) -> int:
    """One layer's parameters that a forward over `tokens` tokens reads: all of them (tokens None: what memory
    holds), or for a mixture-of-experts model only the experts those tokens route to (ShapeSpec.experts_read:
    top-k per token, different tokens' experts assumed distinct; exactly k at batch-1 decode)."""
    if tokens is None or not getattr(spec, "num_experts", 0):
        return spec.layer_params()
    return spec.layer_params(spec.experts_read(tokens))


def _parts(spec: ShapeSpec, dtype: str, layers: int | None, tokens: int | None = None) -> dict[str, float]:
    """Weight bytes by part (see `decode_read_bytes`), of all weights, or of those a forward over `tokens`
    tokens reads (a MoE model's routed experts only). Quantized checkpoints (GPTQ, AWQ, bitsandbytes) keep
    embeddings, lm_head and norms in 16-bit; only the decoder layers' linear weights take the quantized format."""
    n = spec.num_hidden_layers if layers is None else layers
    h, norms = spec.hidden_size, spec.norm_params()
    keep = act_bytes(dtype)
    table = spec.vocab_size * h * keep
    linear = _layer_params(spec, tokens) - norms
    return {"layers": n * (linear * WEIGHT_BYTES[check_dtype(dtype)] + norms * keep),
            "final_norm": h * keep, "embedding": table, "lm_head": 0.0 if spec.tie_word_embeddings else table}


def routed_share(config, tokens: int | None) -> float:
    """The share of a MoE layer's experts a forward over `tokens` tokens reads (top-k per token, distinct across
    tokens, at most all: ShapeSpec.experts_read's assumption); 1 for a dense model or `tokens` None (all)."""
    from labkit.core.shapes import spec_of_config

    if tokens is None:
        return 1.0
    spec = spec_of_config(config)
    return spec.experts_read(tokens) / spec.num_experts if spec.num_experts else 1.0


def measured_parts(model, layers: int | None = None, tokens: int | None = None) -> dict[str, float]:
    """The same parts measured from a built model's stored weights (packed quantized tensors and their scales
    counted as stored, labkit.core.models.weight_bytes), with the decoder layers scaled from the first one to
    `layers` (default: as many as the model has), to project a few-layer model to the full depth. `tokens`: the
    bytes a forward over that many tokens reads, as `_parts` counts them: of a mixture-of-experts model's stored
    experts only the share the tokens route to (top-k per token, distinct across tokens, at most all); None: all
    the weights memory holds."""
    from labkit.core.models import expert_modules, weight_bytes

    inner = model.model
    n = len(inner.layers) if layers is None else layers
    head = model.get_output_embeddings()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    layer = weight_bytes(inner.layers[0])
    experts = expert_modules(inner.layers[0])
    if experts and tokens is not None:  # a MoE: of its experts, the share `tokens` tokens route to
        layer -= sum(weight_bytes(e) for e in experts) * (1 - routed_share(model.config, tokens))
    return {"layers": n * layer, "final_norm": weight_bytes(inner.norm),
            "embedding": weight_bytes(inner.embed_tokens),
            "lm_head": 0.0 if tied or head is None else weight_bytes(head)}


def decode_read_bytes(parts: dict[str, float]) -> float:
    """Bytes one decode step reads: every layer and the head; of the embedding table only the looked-up rows
    (negligible), unless it is tied to the head (`lm_head` 0), when the head reads the table itself."""
    head = parts["lm_head"] or parts["embedding"]
    return parts["layers"] + parts["final_norm"] + head


def weight_bytes(spec: ShapeSpec, dtype: str, layers: int | None = None) -> float:
    """Bytes of all weights in memory (all layers unless `layers` is given)."""
    return sum(_parts(spec, dtype, layers).values())


def decode_weight_bytes(spec: ShapeSpec, dtype: str, layers: int | None = None, tokens: int = 1) -> float:
    """Weight bytes one decode step over `tokens` tokens (the batch) reads for a model of `spec`'s shape held in
    `dtype`: every weight of a dense model; of a mixture-of-experts model only the experts routed to (the
    active parameters at batch 1, ShapeSpec.experts_read for how routing is assumed)."""
    return decode_read_bytes(_parts(spec, dtype, layers, tokens))


def kv_cache_bytes(spec: ShapeSpec, dtype: str, context: int, batch: int = 1, layers: int | None = None) -> float:
    """KV cache of `batch` sequences of `context` tokens: 2 x layers x KV heads x head dim x bytes each."""
    return batch * context * spec.kv_bytes_per_token(act_bytes(dtype), layers)


def forward_flops(spec: ShapeSpec, new_tokens: int, past: int = 0, batch: int = 1, layers: int | None = None,
                  all_logits: bool = False) -> float:
    """FLOPs of one forward over `new_tokens` per sequence with `past` tokens already cached.

    2 per active weight per token for the linear layers (a MoE token runs its top-k experts); attention 4 x
    heads x head dim (the hidden size in most models) per (query, key) pair (QK^T and AV, causal); lm_head
    for the last token only unless `all_logits` (generate keeps the last only)."""
    n = spec.num_hidden_layers if layers is None else layers
    h = spec.hidden_size
    linear = 2 * batch * new_tokens * n * (_layer_params(spec, 1) - spec.norm_params())  # a token's active weights
    pairs = new_tokens * past + new_tokens * (new_tokens + 1) // 2
    attention = 4 * batch * n * spec.num_attention_heads * spec.head_dim * pairs
    head = 2 * batch * (new_tokens if all_logits else 1) * h * spec.vocab_size
    return float(linear + attention + head)


# ---------------------------------------------------------------- machines

@dataclass(frozen=True)
class Card:
    """A machine's limits: memory, bandwidth (GB/s) and dense peak TFLOP/s per dtype (None: no support).
    `source` says where the numbers come from: a datasheet, or this machine's probes."""

    name: str
    memory_gib: float
    bandwidth_gbps: float
    peak_tflops: dict[str, float | None] = field(hash=False)
    source: str = ""
    measured: bool = False

    def peak(self, dtype: str) -> float | None:
        """Peak FLOP/s for a model in `dtype`. Weight-only int8/int4 without a listed int8 rate compute in
        16-bit (fp16, else bf16), as their kernels dequantize before the multiply."""
        t = self.peak_tflops.get(check_dtype(dtype))
        if t is None and dtype in ("int8", "int4"):
            t = self.peak_tflops.get("fp16") or self.peak_tflops.get("bf16")
        return None if t is None else t * 1e12


# Datasheet constants (NVIDIA product datasheets and the Ada whitepaper), dense math, no sparsity. Memory is
# the marketed size; fp32 is plain FP32 (not TF32, which PyTorch leaves off for matmuls by default).
# RTX 4090: fp16/bf16 with FP32 accumulate, as PyTorch uses. V100: no bf16, no int8 tensor cores.
REFERENCE_CARDS: dict[str, Card] = {c.name: c for c in [
    Card("V100-16GB", 16, 900, {"fp32": 15.7, "fp16": 125.0, "bf16": None, "int8": None, "int4": None},
         "datasheet: NVIDIA V100 SXM2 (HBM2 900 GB/s)"),
    Card("V100-32GB", 32, 900, {"fp32": 15.7, "fp16": 125.0, "bf16": None, "int8": None, "int4": None},
         "datasheet: NVIDIA V100 SXM2 (HBM2 900 GB/s)"),
    Card("A100-40GB", 40, 1555, {"fp32": 19.5, "fp16": 312.0, "bf16": 312.0, "int8": 624.0, "int4": None},
         "datasheet: NVIDIA A100 40GB SXM (HBM2 1,555 GB/s)"),
    Card("A100-80GB", 80, 2039, {"fp32": 19.5, "fp16": 312.0, "bf16": 312.0, "int8": 624.0, "int4": None},
         "datasheet: NVIDIA A100 80GB SXM (HBM2e 2,039 GB/s)"),
    Card("H100-80GB", 80, 3350, {"fp32": 67.0, "fp16": 989.0, "bf16": 989.0, "int8": 1979.0, "int4": None},
         "datasheet: NVIDIA H100 SXM5 (HBM3 3.35 TB/s)"),
    Card("RTX-4090", 24, 1008, {"fp32": 82.6, "fp16": 165.2, "bf16": 165.2, "int8": 660.6, "int4": None},
         "datasheet: NVIDIA Ada whitepaper, GeForce RTX 4090 (GDDR6X 1,008 GB/s)"),
]}


def card(name: str) -> Card:
    try:
        return REFERENCE_CARDS[name]
    except KeyError:
        raise ValueError(f"unknown card {name!r}; choose one of {sorted(REFERENCE_CARDS)}") from None


def this_machine(profile: dict, device: str = "cpu", memory_gib: float | None = None) -> Card:
    """This machine as a Card, from a probe summary (hardware.summarize_probes()[device]) or a stored
    profile card: best measured bandwidth and measured matmul GFLOP/s per dtype (int4 -> the bf16 rate,
    as weight-only kernels dequantize). Memory: what is free now (RAM, or the GPU's) unless given."""
    from labkit.core.hardware import memory_bytes

    src = profile.get("probes", profile)  # a stored profile card, or summarize_probes() output
    p = src.get(device, src)
    if "matmul_gflops" not in p:
        raise ValueError(f"no probe results for device {device!r} in this profile")
    mm = p["matmul_gflops"]
    peaks = {dt: (mm[dt] / 1e3 if dt in mm else None) for dt in DTYPES}
    peaks["int4"] = peaks.get("bf16")
    if memory_gib is None and str(device).startswith("cuda"):
        import torch

        memory_gib = torch.cuda.mem_get_info(torch.device(device))[0] / GiB  # free GPU memory now
    elif memory_gib is None:
        memory_gib = memory_bytes()["available"] / GiB
    return Card(f"this machine ({device}, measured)", memory_gib, p["bandwidth_gbps"]["best"], peaks,
                "measured by labkit.core.hardware probes", measured=True)


# ---------------------------------------------------------------- floors

@dataclass
class Floor:
    """The roofline floor of one step: whichever of memory time and compute time is longer."""

    phase: str
    bytes: float
    flops: float
    memory_s: float
    compute_s: float | None  # None when the card has no rate for this dtype

    @property
    def seconds(self) -> float:
        return max(self.memory_s, self.compute_s or 0.0)

    @property
    def bound(self) -> str:
        return "compute" if (self.compute_s or 0.0) > self.memory_s else "memory"

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved: below the card's ridge point (peak / bandwidth) a step is memory-bound."""
        return self.flops / self.bytes

    def fraction(self, measured_s: float) -> float:
        """Fraction of the floor a measured time reaches (1.0 = as fast as the hardware allows)."""
        return self.seconds / measured_s

    def to_dict(self) -> dict:
        return {"phase": self.phase, "bytes": self.bytes, "flops": self.flops, "memory_s": self.memory_s,
                "compute_s": self.compute_s, "floor_s": self.seconds, "bound": self.bound,
                "intensity": self.intensity}


def against_floor(floor: Floor, measured_s: float, hw: Card, dtype: str, source: str = "the probes") -> str:
    """One sentence built from the numbers: the fraction of the floor a measured time reached, the rate it
    implies next to the probe's, and, where it is under two thirds of the floor, what the floor leaves out. A
    measurement that beat its floor (labkit.core.floors.LIMIT) gets the reason instead: which rate (from `source`)
    was wrong, and the floor taken in its place."""
    from labkit.core.floors import of_floor

    frac = floor.seconds / measured_s
    held = of_floor(measured_s, floor, compute=f"{dtype} matmul", source=source)
    if held.reason:  # beaten: a rate was wrong, and the sentence says which instead of printing "182% of the floor"
        return f"{held.fraction:.0%} of its floor ({held.floor_s * 1e3:,.1f} ms): {held.reason}"
    if floor.bound == "compute":
        peak = hw.peak(dtype) or float("nan")
        rate = (f"{floor.flops / measured_s / 1e9:,.0f} GFLOP/s against the {peak / 1e9:,.0f} GFLOP/s the {dtype} "
                "matmul probe reached")
        gap = ("the floor counts only the FLOPs at the probe's rate: attention, norms, softmax and matmul shapes "
               "that run below the probe's rate take the rest")
    else:
        rate = f"{floor.bytes / measured_s / 1e9:,.1f} GB/s against the probe's {hw.bandwidth_gbps:,.1f} GB/s"
        gap = ("the floor counts only the bytes read once at the probe's bandwidth: every step also runs many small "
               "kernels (norms, rotary, attention over the cache, sampling) whose launch and Python overhead it "
               "leaves out, and a matrix-vector kernel may read slower than the probe")
    text = (f"{frac:.0%} of the {floor.bound}-bound floor ({floor.seconds * 1e3:,.1f} ms floor, "
            f"{measured_s * 1e3:,.1f} ms measured): {rate}")
    return text + (f". Why it is {1 / frac:.1f}x the floor here: {gap}" if frac < 2 / 3 else "")


def _floor(phase: str, nbytes: float, flops: float, hw: Card, dtype: str) -> Floor:
    peak = hw.peak(dtype)
    return Floor(phase, nbytes, flops, nbytes / (hw.bandwidth_gbps * 1e9), flops / peak if peak else None)


def decode_floor(spec: ShapeSpec, dtype: str, hw: Card, context: int, batch: int = 1,
                 layers: int | None = None) -> Floor:
    """One decode step (one new token for each of `batch` sequences with `context` tokens cached): read
    the weights once (a MoE model: the experts the batch routes to) plus every sequence's KV cache."""
    nbytes = decode_weight_bytes(spec, dtype, layers, batch) + kv_cache_bytes(spec, dtype, context, batch, layers)
    return _floor("decode", nbytes, forward_flops(spec, 1, context, batch, layers), hw, dtype)


def prefill_floor(spec: ShapeSpec, dtype: str, hw: Card, prompt: int, batch: int = 1,
                  layers: int | None = None) -> Floor:
    """The prefill of `batch` prompts of `prompt` tokens: FLOPs over peak, unless bytes take longer."""
    nbytes = decode_weight_bytes(spec, dtype, layers, batch * prompt) + kv_cache_bytes(spec, dtype, prompt, batch,
                                                                                        layers)
    return _floor("prefill", nbytes, forward_flops(spec, prompt, 0, batch, layers), hw, dtype)


def predict(profile: dict, spec: ShapeSpec, dtype: str, prompt: int, new_tokens: int, batch: int = 1,
            layers: int | None = None, device: str | None = None) -> dict:
    """What the stored profile card predicts for a run: the floors on this machine and the times expected
    at the baseline's measured fraction of the floor. Later notebooks print this next to their measurement."""
    hw = this_machine(profile, device or profile.get("device", "cpu"))
    d = decode_floor(spec, dtype, hw, prompt + new_tokens // 2, batch, layers)
    p = prefill_floor(spec, dtype, hw, prompt, batch, layers)
    base = profile.get("baseline", {})
    out = {"decode_floor_s": d.seconds, "prefill_floor_s": p.seconds, "decode_bound": d.bound,
           "prefill_bound": p.bound}
    if base.get("decode_fraction"):
        out["decode_expected_s"] = d.seconds / base["decode_fraction"]
    if base.get("prefill_fraction"):
        out["prefill_expected_s"] = p.seconds / base["prefill_fraction"]
    return out


def points(probes: list, baseline: dict, device: str = "cpu") -> list[dict]:
    """Measured points for plot_roofline: the matrix probes of `device` (hardware.Probe objects) and the
    baseline's decode and prefill from a profile card's 'baseline' entry."""
    pts = [{"label": f"{p.name} {p.dtype}", "intensity": p.flops / p.bytes_moved, "gflops": p.gflop_per_s}
           for p in probes if p.name in ("matvec", "matmul") and p.device == device and not p.skipped]
    pts += [{"label": f"baseline {ph}", "intensity": baseline[f"{ph}_intensity"],
             "gflops": baseline[f"{ph}_gflops"]} for ph in ("decode", "prefill")]
    return pts


def plot_roofline(hw: Card, points: list[dict], dtypes: tuple[str, ...] = ("fp32", "bf16", "int8")):
    """Attainable FLOP/s against arithmetic intensity (log-log) for each dtype's peak, with measured points
    ({"label", "intensity" FLOP/byte, "gflops" achieved}). Returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.logspace(-1, 4, 200)
    bw = hw.bandwidth_gbps
    for dt in dtypes:
        peak = hw.peak(dt)
        if peak:
            ax.plot(x, np.minimum(peak / 1e9, bw * x), label=f"roof {dt}: {peak / 1e9:,.0f} GFLOP/s")
    placed: list[tuple[float, float]] = []
    for pt in points:
        ax.scatter([pt["intensity"]], [pt["gflops"]], zorder=3)
        # points within ~15% of each other on both log axes would print their labels on top of each other:
        # each such neighbour already labelled moves this label one line further down
        near = sum(abs(np.log(pt["intensity"] / i)) < 0.15 and abs(np.log(pt["gflops"] / g)) < 0.15
                   for i, g in placed)
        placed.append((pt["intensity"], pt["gflops"]))
        ax.annotate(pt["label"], (pt["intensity"], pt["gflops"]), textcoords="offset points",
                    xytext=(5, -12 - 10 * near), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per byte moved)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"Roofline of {hw.name}: bandwidth {bw:,.1f} GB/s")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def floor_table(spec: ShapeSpec, cards: list[Card], dtypes: tuple[str, ...] = ("fp32", "fp16", "int8", "int4"),
                prompt: int = 512, batch: int = 1, layers: int | None = None) -> list[dict]:
    """Decode and prefill floors of `spec` on each card for each dtype: the prediction, before measuring.
    Decode is taken at a context of `prompt` tokens; 'tok/s ceiling' is 1 / decode floor per sequence."""
    rows = []
    for hw in cards:
        for dt in dtypes:
            d = decode_floor(spec, dt, hw, prompt, batch, layers)
            p = prefill_floor(spec, dt, hw, prompt, batch, layers)
            rows.append({"card": hw.name, "dtype": dt, "decode floor ms": d.seconds * 1e3, "decode bound": d.bound,
                         "tok/s ceiling": 1 / d.seconds,
                         "prefill floor ms": p.seconds * 1e3 if p.compute_s is not None else None,
                         "prefill bound": p.bound if p.compute_s is not None else f"no {dt} rate"})
    return rows
