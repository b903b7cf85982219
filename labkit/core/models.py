"""Models for the course: the embedded trained model, shape-faithful random models, or the learner's own.

- `load("stdlib-llama-16m")`: the embedded model under data/models/, trained by labkit.core.train_tiny. Quality
  is measured on it.
- `build("llama-2-13b", layers=2)`: the published dimensions of a real model with fewer layers and seeded
  random weights (initialised as transformers does). Speed is measured on it; `ShapeSpec` gives the full
  model's parameter count and bytes, so a notebook can project the full model from the layers it built.
- `load("/path/to/checkpoint")` or `load("org/name")`: a learner's own model. Safetensors only unless
  `allow_pickle=True`; `trust_remote_code` stays off unless passed.
"""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import torch

from labkit import DATA
from labkit.core.params import ParamError
from labkit.core.shapes import SHAPES, ModelError, ShapeSpec, dense_equivalent, spec_of_config  # noqa: F401

EMBEDDED = "stdlib-llama-16m"
MODELS_DIR = DATA / "models"

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(set(DTYPES))}") from None


def folder_spec(path) -> ShapeSpec:
    """The ShapeSpec of a local model folder, from its config.json (`spec_of_config`), named after the folder."""
    folder = Path(path).expanduser()
    cfg = folder / "config.json"
    if not cfg.exists():
        raise ModelError(f"no config.json in {folder}: give a Hugging Face model folder or one of {sorted(SHAPES)}")
    return spec_of_config(json.loads(cfg.read_text(encoding="utf-8")), folder.name)


def is_folder(name_or_path: str) -> bool:
    """True when `name_or_path` is a local model folder (not a shape name, not the embedded model)."""
    return name_or_path not in SHAPES and name_or_path != EMBEDDED and _looks_like_path(str(name_or_path)) and \
        Path(name_or_path).expanduser().is_dir()


class ModelParamError(ModelError, ParamError):
    """A notebook's `model` parameter names no model: both a ModelError and a ParamError."""


def check_speed_model(name_or_path: str) -> str:
    """`name_or_path` if it is a shape name or a local model folder with a config.json (a speed model the
    lessons can build with few layers), else a ModelError naming what is valid."""
    if name_or_path in SHAPES:
        return name_or_path
    if is_folder(name_or_path):
        try:
            folder_spec(name_or_path)  # fails clearly without config.json or with a non-decoder config
        except ModelError as e:
            raise ModelParamError(f"model={name_or_path!r}: {e}") from None
        return name_or_path
    near = _near_shape(str(name_or_path))
    hint = f"did you mean {near!r}? " if near else ""
    raise ModelParamError(f"model={name_or_path!r} is neither a shape name nor a model folder; {hint}choose one of "
                     f"{sorted(SHAPES)} or give the path of a local Hugging Face folder (config.json, *.safetensors)")


def _near_shape(name: str) -> str | None:
    """The shape name `name` was probably meant to be ("llama2-7b" -> "llama-2-7b"), or None."""
    import difflib

    hit = difflib.get_close_matches(str(name).lower(), list(SHAPES), n=1, cutoff=0.75)
    return hit[0] if hit else None


def shape(name: str) -> ShapeSpec:
    """The ShapeSpec of a shape name, or of a local model folder (its config.json)."""
    if name not in SHAPES and is_folder(name):
        return folder_spec(name)
    try:
        return SHAPES[name]
    except KeyError:
        near = _near_shape(name)
        hint = f"did you mean {near!r}? " if near else ""
        raise ModelError(f"unknown shape {name!r}; {hint}choose one of {sorted(SHAPES)}") from None


def config_for(spec: ShapeSpec, layers: int):
    """The transformers config of `spec`'s family and dimensions with `layers` decoder layers: what `build`
    instantiates, and what a caller changes first to build a variant (a smaller vocabulary, another width)."""
    from transformers import AutoConfig

    extra = dict(spec.extra)
    rope = {"rope_type": "default", **extra.pop("rope_scaling", {}), "rope_theta": spec.rope_theta}
    kw = dict(vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
              intermediate_size=spec.intermediate_size, num_hidden_layers=layers,
              num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_key_value_heads,
              max_position_embeddings=spec.max_position_embeddings, tie_word_embeddings=spec.tie_word_embeddings,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if spec.head_size:
        kw["head_dim"] = spec.head_size
    if spec.model_type == "llama":
        kw["attention_bias"] = spec.attention_bias
    if spec.sliding_window:
        kw["sliding_window"] = spec.sliding_window
    if spec.model_type == "qwen3_moe":
        kw.update(num_experts=spec.num_experts, num_experts_per_tok=spec.experts_per_token,
                  moe_intermediate_size=spec.moe_intermediate_size, norm_topk_prob=True)
    elif spec.model_type in ("mixtral", "gpt_oss"):  # their experts are `intermediate_size` wide
        kw.update(num_local_experts=spec.num_experts, num_experts_per_tok=spec.experts_per_token)
    if spec.model_type == "gemma3_text":
        local = extra.pop("rope_local_base_freq")
        kw["rope_parameters"] = {"full_attention": rope, "sliding_attention": {"rope_type": "default",
                                                                               "rope_theta": local}}
    else:
        kw["rope_parameters"] = rope
    return AutoConfig.for_model(spec.model_type, **kw, **extra)


@contextlib.contextmanager
def _no_torch_reset():
    """Skip torch's own initialisation of Linear and Embedding weights while transformers builds a model: it
    initialises every one of them again right after (normal_ with the config's initializer_range), so torch's
    kaiming uniform_ was pure cost (5 of the 12 s a Llama-2-13B layer with its head took to build here)."""
    saved = {cls: cls.reset_parameters for cls in (torch.nn.Linear, torch.nn.Embedding)}
    for cls in saved:
        cls.reset_parameters = lambda self: None
    try:
        yield
    finally:
        for cls, f in saved.items():
            cls.reset_parameters = f


def attention_for(config, attn_implementation: str) -> str:
    """The attention implementation to ask transformers for: the one asked, except "sdpa" for a model class
    that has no SDPA path (gpt-oss: its attention sinks run in the eager or flash paths), which gets "eager"
    instead of transformers' refusal to load. Only what `generate` runs changes: the engine has its own."""
    from transformers import AutoModelForCausalLM

    if attn_implementation != "sdpa":
        return attn_implementation
    cls = AutoModelForCausalLM._model_mapping.get(type(config), None)
    return "sdpa" if getattr(cls, "_supports_sdpa", True) else "eager"


def build(name: str | ShapeSpec, layers: int | None = None, dtype="fp32", device="cpu", seed: int = 0,
          attn_implementation: str = "sdpa", experts_implementation: str | None = None):
    """A shape-faithful model: `name`'s published dimensions (a shape name, or a ShapeSpec such as
    `dense_equivalent`'s) with `layers` decoder layers (default: 2) and seeded random weights, initialised as
    transformers initialises a new model. In eval mode. `name` may be a local model folder: then its first
    `layers` layers with their real weights (`load`). `experts_implementation`: how a MoE model runs its experts
    (transformers' "eager" loop over the routed experts, "grouped_mm", ...; None: transformers' default)."""
    from transformers import AutoModelForCausalLM

    if isinstance(name, str) and is_folder(name):  # a learner's own model: its real weights, its first layers
        return load(name, dtype=dtype, device=device, layers=2 if layers is None else layers,
                    attn_implementation=attn_implementation, cut=True)
    spec = name if isinstance(name, ShapeSpec) else shape(name)
    layers = 2 if layers is None else int(layers)
    if not 1 <= layers <= spec.num_hidden_layers:
        raise ModelError(f"layers must be between 1 and {spec.num_hidden_layers} for {spec.name}, got {layers}")
    cfg = config_for(spec, layers)
    if experts_implementation is not None:
        cfg._experts_implementation = experts_implementation
    torch.manual_seed(seed)
    with torch.device(device), _no_torch_reset():
        model = AutoModelForCausalLM.from_config(cfg, dtype=as_dtype(dtype),
                                                 attn_implementation=attention_for(cfg, attn_implementation))
    model.eval()
    model.labkit_shape = spec  # so callers can project to the full model
    return model


def _looks_like_path(s: str) -> bool:
    return s.startswith((".", "/", "~")) or "\\" in s or Path(s).exists() or s.count("/") > 1


def check_safetensors(path: Path) -> None:
    """Fail clearly on a truncated or corrupted .safetensors file before transformers reads it."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelError(f"{path} is truncated (only {size} bytes): download or copy it again")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or 8 + n > size:
            raise ModelError(f"{path} has a corrupted header (says {n} header bytes, file has {size}): "
                             "download or copy it again")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelError(f"{path} has a corrupted header (not JSON): download or copy it again") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ModelError(f"{path} is truncated: its header describes {8 + n + end} bytes but the file has "
                         f"{size}; download or copy it again")


def resolve(name_or_path: str) -> Path | str:
    """The local folder for the embedded name or a path; the hub id unchanged otherwise."""
    if name_or_path == EMBEDDED or (MODELS_DIR / name_or_path).is_dir():
        return MODELS_DIR / name_or_path
    if _looks_like_path(name_or_path):
        p = Path(name_or_path).expanduser()
        if not p.exists():
            raise ModelError(f"no model at {p}: check the path (embedded model: {EMBEDDED!r}; "
                             f"shape models: {sorted(SHAPES)})")
        return p
    return name_or_path


@contextlib.contextmanager
def _quiet_if(quiet: bool):
    """transformers' warnings off while loading a folder cut to its first layers (its load report lists every
    weight of the layers left out), back to what they were after."""
    from transformers.utils import logging

    before = logging.get_verbosity()
    if quiet:
        logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(before)


def _first_layers(folder: Path, layers: int, trust_remote_code: bool = False):
    """`folder`'s config cut to its first `layers` decoder layers (per-layer lists such as Gemma 3's layer_types
    cut alike): from_pretrained then reads only those layers' weights."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    text = getattr(cfg, "text_config", None) or cfg
    if not 1 <= layers <= text.num_hidden_layers:
        raise ModelError(f"layers must be between 1 and {text.num_hidden_layers} for {folder.name}, got {layers}")
    text.num_hidden_layers = layers
    if isinstance(getattr(text, "layer_types", None), list):
        text.layer_types = text.layer_types[:layers]
    return cfg


def load(name_or_path: str = EMBEDDED, dtype="fp32", device="cpu", attn_implementation: str = "sdpa",
         layers: int | None = None, trust_remote_code: bool = False, allow_pickle: bool = False,
         seed: int = 0, cut: bool = False):
    """Load any model the course supports (see the module docstring). Returns the model in eval mode. `layers`
    applies to a shape model, and with `cut` to a folder too (its first `layers` layers, real weights)."""
    from transformers import AutoModelForCausalLM

    if name_or_path in SHAPES:
        return build(name_or_path, layers=layers, dtype=dtype, device=device, seed=seed,
                     attn_implementation=attn_implementation)
    near = _near_shape(name_or_path)
    if near and not _looks_like_path(name_or_path):
        raise ModelError(f"{name_or_path!r} is not a model the course knows: did you mean the shape {near!r}? "
                         f"Shapes: {sorted(SHAPES)}; the embedded model: {EMBEDDED!r}; or a local folder")
    where = resolve(name_or_path)
    kw = dict(dtype=as_dtype(dtype), attn_implementation=attn_implementation,
              trust_remote_code=trust_remote_code)
    if isinstance(where, Path):
        st = sorted(where.glob("*.safetensors"))
        pickles = sorted(where.glob("*.bin")) + sorted(where.glob("*.pt")) + sorted(where.glob("*.pth"))
        if not st and pickles and not allow_pickle:
            raise ModelError(f"{where} has only pickle weights ({pickles[0].name}); pickles can run code when "
                             "loaded. Convert them to safetensors, or pass allow_pickle=True if you trust "
                             "the source")
        if not st and not pickles:
            raise ModelError(f"{where} has no weights (*.safetensors); is it a model folder?")
        if not (where / "config.json").exists():
            raise ModelError(f"{where} has weights but no config.json: a Hugging Face model folder needs both "
                             "(save it with model.save_pretrained(folder), or copy config.json beside the weights)")
        for f in st:
            check_safetensors(f)
        kw["use_safetensors"] = bool(st)
        if cut and layers is not None:
            kw["config"] = _first_layers(where, int(layers), trust_remote_code)
        if attn_implementation == "sdpa":
            from transformers import AutoConfig

            cfg = kw.get("config") or AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
            kw["attn_implementation"] = attention_for(cfg, attn_implementation)
        with _quiet_if(cut and layers is not None):  # the layers left out would be listed as unexpected keys
            model = AutoModelForCausalLM.from_pretrained(where, **kw)
        if cut and layers is not None:
            model.labkit_shape = folder_spec(where)  # the full model's dimensions, to project to it
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(where, use_safetensors=not allow_pickle, **kw)
        except OSError as e:
            raise ModelError(
                f"could not load {where!r} from the Hugging Face Hub ({e.__class__.__name__}). Offline? "
                f"Download it once where you have a connection (`hf download {where}`) and pass the local "
                f"folder, or use the embedded model {EMBEDDED!r} or a shape model {sorted(SHAPES)}") from e
    model.to(device)
    model.eval()
    return model


def load_tokenizer(name_or_path: str = EMBEDDED):
    from transformers import AutoTokenizer

    if name_or_path in SHAPES:
        raise ModelError(f"{name_or_path!r} is a shape model with random weights: it has no tokenizer; "
                         "use labkit.core.models.prompt_ids() for token ids")
    return AutoTokenizer.from_pretrained(resolve(name_or_path))


TEXTS = {"heldout": "heldout.txt", "calibration": "calibration.txt"}


def prompt_ids(n_tokens: int, batch: int = 1, vocab_size: int = 32000, seed: int = 0,
               tokenizer=None, source: str = "heldout") -> torch.Tensor:
    """`batch` rows of exactly `n_tokens` token ids (the guide's method uses 512-token prompts). With a
    tokenizer: seeded windows of real text from data/eval/ (`source`: "heldout", never trained on, for prompts
    and evaluation; "calibration", from the training side, for GPTQ/AWQ/Wanda calibration); without: seeded
    random ids in [3, vocab_size) (for shape models, which have no tokenizer)."""
    if n_tokens < 1:
        raise ValueError("n_tokens must be >= 1")
    if tokenizer is None:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(3, vocab_size, (batch, n_tokens), generator=g)
    if source not in TEXTS:
        raise ValueError(f"unknown text source {source!r}; choose one of {list(TEXTS)}")
    text = (DATA / "eval" / TEXTS[source]).read_text(encoding="utf-8")
    ids = tokenizer(text, return_tensors="pt", verbose=False)["input_ids"][0]
    if ids.numel() <= n_tokens:
        raise ValueError(f"{TEXTS[source]} has only {ids.numel()} tokens, need more than {n_tokens}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - n_tokens, (batch,), generator=g).tolist()
    return torch.stack([ids[s : s + n_tokens] for s in starts])


# ---------------------------------------------------------------- bytes

def _tensor_bytes(t, seen: set) -> int:
    """Bytes a tensor really holds: a torchao subclass is the sum of its inner tensors (qdata, scale, ...)."""
    if isinstance(t, (tuple, list)):
        return sum(_tensor_bytes(x, seen) for x in t)
    if not isinstance(t, torch.Tensor):
        return 0
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n), seen) for n in names)
    if t.is_quantized:  # torch.ao's qint8 tensors: 1 byte each (+ one scale per tensor or channel)
        key = (t.data_ptr(), t.numel())
    else:
        key = (t.data_ptr(), t.numel(), t.dtype)
    if key in seen:
        return 0
    seen.add(key)
    return t.numel() * t.element_size()


def swap(model, name: str, make) -> None:
    """Replace the submodule `name` of `model` with `make(submodule)`: how a technique rewrites one layer."""
    parent, _, leaf = name.rpartition(".")
    holder = model.get_submodule(parent) if parent else model
    setattr(holder, leaf, make(getattr(holder, leaf)))


EXPERT_PARAMS = ("gate_up_proj", "down_proj")  # transformers 5's fused experts: one 3-D tensor per projection


def _fused(m) -> bool:
    return any(getattr(m, p, None) is not None and getattr(m, p).dim() == 3 for p in EXPERT_PARAMS)


def fused_experts(module) -> list:
    """The mixture-of-experts modules inside `module` that hold all their experts as 3-D tensors (transformers 5's
    Qwen3-MoE, Mixtral and gpt-oss: `gate_up_proj` [experts, ...] and `down_proj`), not as nn.Linear layers."""
    return [m for m in module.modules() if type(m).__name__.endswith("Experts") and _fused(m)]


def expert_modules(module) -> list:
    """Every experts module inside `module`: fused (`fused_experts`) or made of per-expert layers (labkit's
    techniques.quant_experts.UnfusedExperts, whose `gate_up` and `down` are lists of nn.Linear)."""
    return [m for m in module.modules() if type(m).__name__.endswith("Experts")
            and (_fused(m) or isinstance(getattr(m, "gate_up", None), torch.nn.ModuleList))]


def weight_bytes(module) -> int:
    """Bytes of everything in `module`'s state dict (parameters and buffers) as stored in memory: packed
    quantized weights with their scales (torchao, torch.ao, bitsandbytes), a tied weight counted once. What a
    decode step streams when it reads every weight."""
    seen: set = set()
    return sum(_tensor_bytes(v, seen) for v in module.state_dict(keep_vars=True).values())


def saved_bytes(model) -> int:
    """Bytes `torch.save(model.state_dict())` writes (the size on disk), without keeping them in memory."""
    import io

    class _Count(io.RawIOBase):
        n = 0

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            self.n += len(b)
            return len(b)

    sink = _Count()
    torch.save(model.state_dict(), sink)
    return sink.n
