"""Notebook 04's configuration, checked before any rank starts: the sizes, the presets, the device and the refusals.

`lesson_config` turns the notebook's parameters into a `Config` and `Config.check` tries every constraint of the
split (world size against cores or GPUs, heads against the TP degree, layers against the stages, the batch against
the micro-batches) so a bad choice fails in the first cell. The datasheet links, the run names shared by the ranks
and the tables, and the small Llama shapes of C14's sweep (`sweep_config`) live here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from labkit.core.models import shape
from labkit.techniques import parallel

PLANNED = ("llama-2-13b", "qwen2.5-32b", "llama-2-70b")

# Datasheet constants (labelled as such in every table): one direction of a GPU-to-GPU link, GB/s.
LINKS_GBPS = {
    "NVLink 4 (H100 SXM, datasheet 900 GB/s both ways)": 450.0,
    "NVLink 3 (A100 SXM, datasheet 600 GB/s both ways)": 300.0,
    "PCIe 5.0 x16 (datasheet)": 64.0,
    "PCIe 4.0 x16 (datasheet)": 32.0,
}


@dataclass
class Config:
    """What the ranks measure; every size comes from the notebook's parameters."""

    model: str = "llama-2-7b"
    layers: int = 2
    seed: int = 0
    device: str = "cpu"
    world_size: int = 2
    prompt_len: int = 32
    new_tokens: int = 6
    rounds: int = 3
    pp_batch: int = 4
    pp_len: int = 16
    micro_batches: list[int] = field(default_factory=lambda: [1, 2, 4])
    n_requests: int = 4
    output_len: tuple[int, int] = (4, 8)
    message_bytes: list[int] = field(default_factory=lambda: [4 * 4**k for k in range(0, 12, 2)])
    hidden_sizes: list[int] = field(default_factory=lambda: [2048, 512, 128])

    def check(self) -> Config:
        """Every constraint before a process starts: world size against cores/GPUs, heads against the TP degree,
        layers against the stages, the batch against the micro-batches."""
        parallel.check_world_size(self.world_size, self.device)
        parallel.check_tp(shape(self.model), self.world_size)  # a ShapeSpec names its heads as a config does
        parallel.check_stages(self.layers, self.world_size)
        for m in self.micro_batches:
            parallel.check_microbatches(self.pp_batch, m)
        for h in self.hidden_sizes:
            parallel.check_tp(sweep_config(h), self.world_size)
        return self


PRESETS = {
    "ci": {"layers": 2, "prompt_len": 32, "new_tokens": 6, "rounds": 2, "micro_batches": [1, 2, 4], "pp_batch": 4,
           "pp_len": 16, "n_requests": 4, "output_len": (4, 8), "largest_message": 4 * 4**12,
           "hidden_sizes": [2048, 512, 128]},
    "full": {"layers": 4, "prompt_len": 512, "new_tokens": 16, "rounds": 5, "micro_batches": [1, 2, 4, 8],
             "pp_batch": 8, "pp_len": 128, "n_requests": 8, "output_len": (16, 64), "largest_message": 4 * 4**14,
             "hidden_sizes": [4096, 2048, 1024, 512, 256, 128]},
}


def lesson_config(preset: str, model: str, device: str, seed: int, world_size: int, **sizes) -> Config:
    """Notebook 04's parameters, checked at once: a size left as None follows the preset (params.default), a given
    one is checked; then every constraint of the split (Config.check). The preset's hidden sizes keep only those
    whose heads divide by `world_size`; hidden sizes you give must all fit."""
    from labkit.core import params

    params.check("seed", seed, int)
    params.check("world_size", world_size, int, min=1)
    p = params.pick(preset, **PRESETS)
    got = {}
    for name in ("layers", "prompt_len", "rounds", "pp_batch"):
        got[name] = params.default(name, sizes.pop(name, None), preset, ci=PRESETS["ci"][name],
                                   full=PRESETS["full"][name], min=1)
    got["new_tokens"] = params.default("new_tokens", sizes.pop("new_tokens", None), preset,
                                       ci=PRESETS["ci"]["new_tokens"], full=PRESETS["full"]["new_tokens"], min=2)
    got["n_requests"] = params.default("n_requests", sizes.pop("n_requests", None), preset,
                                       ci=PRESETS["ci"]["n_requests"], full=PRESETS["full"]["n_requests"],
                                       min=world_size)
    for name in ("micro_batches", "hidden_sizes"):
        given = sizes.pop(name, None)
        vals = params.default(name, given, preset, ci=PRESETS["ci"][name], full=PRESETS["full"][name], kind=list)
        for v in vals:
            params.check(f"{name} item", v, int, min=1)
        if name == "hidden_sizes" and given is None:
            vals = [h for h in vals if sweep_config(h).num_attention_heads % world_size == 0]
        got[name] = list(vals)
    if sizes:
        raise params.ParamError(f"unknown size parameter(s) {sorted(sizes)}")
    largest = p["largest_message"]
    msgs = [4 * 4**k for k in range(20) if 4 * 4**k <= largest]
    return Config(model=model, seed=seed, device=device, world_size=world_size, pp_len=p["pp_len"],
                  output_len=p["output_len"], message_bytes=msgs, **got).check()


ALL_CORES, ONE_SHARE, ONE_GPU = "one process, all cores", "one process, one rank's cores", "one process, one GPU"


def solo_name(device_type: str) -> str:
    """The one-process baseline: the whole machine on a CPU, one GPU with CUDA."""
    return ONE_GPU if device_type == "cuda" else ALL_CORES


def one_device_name(device_type: str) -> str:
    """One rank's share of the machine alone: what each rank of a split brings (one core here, one GPU)."""
    return ONE_GPU if device_type == "cuda" else ONE_SHARE


def sweep_config(hidden: int, layers: int = 2, vocab: int = 256):
    """A small Llama at `hidden` with Llama-2-7B's proportions (MLP 2.6875x hidden, heads of 128, or of 64 up to
    512): the shapes of C14's granularity sweep. A 256-token vocabulary keeps the embedding and head negligible."""
    from transformers import LlamaConfig

    head_dim = 128 if hidden > 512 else 64
    heads = hidden // head_dim
    inter = int(round(hidden * 11008 / 4096 / 128)) * 128
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, head_dim=head_dim,
                       max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def refusals(cfg: Config) -> list[dict]:
    """Bad choices asked on purpose, each with the error that names its constraint (nothing is started)."""
    spec = shape(cfg.model)
    most = parallel.max_world_size(cfg.device)
    bad_tp = next(d for d in range(2, 1000) if spec.num_attention_heads % d or spec.num_key_value_heads % d)
    asks = {f"world size {most + 1} with {most} {'cores' if cfg.device == 'cpu' else 'GPUs'}":
            lambda: parallel.check_world_size(most + 1, cfg.device),
            f"TP={bad_tp} on {spec.name}": lambda: parallel.check_tp(spec, bad_tp),
            f"{cfg.layers + 1} layers in {cfg.world_size} pipeline stages":
            lambda: parallel.check_stages(cfg.layers + 1, cfg.world_size),
            f"a batch of {cfg.pp_batch} in {cfg.pp_batch + 1} micro-batches":
            lambda: parallel.check_microbatches(cfg.pp_batch, cfg.pp_batch + 1)}
    rows = []
    for asked, fn in asks.items():
        try:
            fn()
            rows.append({"asked": asked, "refused with": "(accepted)"})
        except parallel.ParallelError as e:
            rows.append({"asked": asked, "refused with": str(e)})
    return rows


def pick_device(device: str, world_size: int) -> tuple[str, str | None]:
    """The device the ranks use ("auto", "cpu" or "cuda" asked) and, when NCCL does not run, why: enough CUDA GPUs
    run NCCL (one per rank); otherwise the ranks run on CPU cores with gloo, the same code path. Asking for "cuda"
    without a GPU per rank is an error naming how many there are."""
    if device not in ("auto", "cpu", "cuda"):
        raise parallel.ParallelError(f"unknown device {device!r}; choose 'auto', 'cpu' or 'cuda'")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cuda" or (device == "auto" and n >= world_size):
        parallel.check_world_size(world_size, "cuda")
        return "cuda", None
    why = (f"NCCL needs {world_size} CUDA GPUs, one per rank; this machine has {n}" if n < world_size else
           "device='cpu' was asked for")
    return "cpu", f"NCCL on {world_size} GPUs: skipped ({why}); the ranks run on CPU cores with gloo"
