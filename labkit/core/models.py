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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from labkit import DATA

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


class ModelError(ValueError):
    """A model could not be loaded or built; the message names the fix."""


@dataclass(frozen=True)
class ShapeSpec:
    """Published dimensions of a real model (from its config.json on the Hugging Face Hub).

    A mixture-of-experts model (`num_experts` > 0) has `num_experts` SwiGLU experts of `moe_intermediate_size`
    in every layer and a router; each token runs `experts_per_token` of them, so its *active* parameters (what
    one token's forward reads and multiplies) are far fewer than the total (what memory holds)."""

    name: str
    model_type: str  # the transformers model_type: "llama", "qwen2", "qwen3", "qwen3_moe", "mistral", ...
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2 has biases on q, k, v
    head_size: int = 0  # head_dim when it is not hidden / heads (Qwen3, Gemma 3); 0: hidden / heads
    num_experts: int = 0  # 0: a dense MLP
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    qk_norm: bool = False  # an RMS norm on each head's q and k (Qwen3, Gemma 3)
    norms_per_layer: int = 2  # RMS norms of hidden size per layer (Gemma 3: 4)
    sliding_window: int | None = None
    extra: tuple = ()  # other config.json fields, (key, value) pairs: rope scaling, Gemma's layer pattern

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden_size // self.num_attention_heads

    def experts_read(self, tokens: int = 1) -> int:
        """Experts whose weights a forward over `tokens` tokens reads, per layer. Assumption: each token picks
        its top-k experts and different tokens pick different ones until all are used (an upper bound; at
        batch 1 decode it is exactly k). All of them for a dense model (its one MLP counts as 1)."""
        if not self.num_experts:
            return 1
        return min(self.num_experts, self.experts_per_token * max(1, int(tokens)))

    def norm_params(self) -> int:
        """Parameters of one layer's norms: kept 16-bit by quantized formats, no matmul FLOPs."""
        return self.norms_per_layer * self.hidden_size + (2 * self.head_dim if self.qk_norm else 0)

    def layer_params(self, experts: int | None = None) -> int:
        """Parameters of one decoder layer (attention + SwiGLU MLP or experts and router + norms), counting
        `experts` experts (default: all of them; `experts_per_token` gives the active parameters)."""
        h, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        attn = 2 * h * q + 2 * h * kv
        if self.attention_bias:
            attn += q + 2 * kv
        if self.num_experts:
            n = self.num_experts if experts is None else experts
            mlp = n * 3 * h * self.moe_intermediate_size + h * self.num_experts
        else:
            mlp = 3 * h * self.intermediate_size
        return attn + mlp + self.norm_params()

    def embedding_params(self) -> int:
        emb = self.vocab_size * self.hidden_size
        return emb if self.tie_word_embeddings else 2 * emb

    def params(self, layers: int | None = None, active: bool = False) -> int:
        """Total parameters with `layers` decoder layers (all of them by default); `active`: those one token
        uses (a MoE model's top-k experts per layer; the same as the total for a dense model)."""
        n = self.num_hidden_layers if layers is None else layers
        per_layer = self.layer_params(self.experts_per_token if active and self.num_experts else None)
        return self.embedding_params() + n * per_layer + self.hidden_size  # + final norm

    def active_params(self, layers: int | None = None) -> int:
        return self.params(layers, active=True)

    def kv_bytes_per_token(self, bytes_per_elem: float = 2, layers: int | None = None) -> float:
        """2 (K and V) x layers x KV heads x head dim x bytes."""
        n = self.num_hidden_layers if layers is None else layers
        return 2 * n * self.num_key_value_heads * self.head_dim * bytes_per_elem

    def to_dict(self) -> dict:
        return {**asdict(self), "head_dim": self.head_dim, "params": self.params(),
                "active_params": self.active_params(), "layer_params": self.layer_params()}


_LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192}
SHAPES: dict[str, ShapeSpec] = {s.name: s for s in [
    ShapeSpec("llama-2-7b", "llama", 4096, 11008, 32, 32, 32, 32000, 4096, 10000.0),
    ShapeSpec("llama-2-13b", "llama", 5120, 13824, 40, 40, 40, 32000, 4096, 10000.0),
    ShapeSpec("llama-3-8b", "llama", 4096, 14336, 32, 32, 8, 128256, 8192, 500000.0),
    ShapeSpec("tinyllama-1.1b", "llama", 2048, 5632, 22, 32, 4, 32000, 2048, 10000.0),
    ShapeSpec("qwen2.5-0.5b", "qwen2", 896, 4864, 24, 14, 2, 151936, 32768, 1000000.0,
              tie_word_embeddings=True, attention_bias=True),
    ShapeSpec("qwen2.5-32b", "qwen2", 5120, 27648, 64, 40, 8, 152064, 32768, 1000000.0, attention_bias=True),
    ShapeSpec("llama-2-70b", "llama", 8192, 28672, 80, 64, 8, 32000, 4096, 10000.0),
    # The current families, from each checkpoint's config.json on the Hugging Face Hub: meta-llama/Llama-3.1-8B,
    # Qwen/Qwen3-8B, Qwen/Qwen3-30B-A3B, mistralai/Mistral-7B-v0.1, mistralai/Mixtral-8x7B-v0.1, and the
    # text_config of google/gemma-3-12b-pt (its vision tower, ~0.4B, is not modelled).
    ShapeSpec("llama-3.1-8b", "llama", 4096, 14336, 32, 32, 8, 128256, 131072, 500000.0,
              extra=(("rope_scaling", _LLAMA31_ROPE),)),
    ShapeSpec("qwen3-8b", "qwen3", 4096, 12288, 36, 32, 8, 151936, 40960, 1000000.0, head_size=128, qk_norm=True),
    ShapeSpec("qwen3-30b-a3b", "qwen3_moe", 2048, 6144, 48, 32, 4, 151936, 40960, 1000000.0, head_size=128,
              qk_norm=True, num_experts=128, experts_per_token=8, moe_intermediate_size=768),
    ShapeSpec("mistral-7b", "mistral", 4096, 14336, 32, 32, 8, 32000, 32768, 10000.0, sliding_window=4096),
    ShapeSpec("mixtral-8x7b", "mixtral", 4096, 14336, 32, 32, 8, 32000, 32768, 1000000.0, num_experts=8,
              experts_per_token=2, moe_intermediate_size=14336),
    ShapeSpec("gemma-3-12b", "gemma3_text", 3840, 15360, 48, 16, 8, 262208, 131072, 1000000.0,
              tie_word_embeddings=True, head_size=256, qk_norm=True, norms_per_layer=4, sliding_window=1024,
              extra=(("query_pre_attn_scalar", 256), ("sliding_window_pattern", 6),
                     ("rope_local_base_freq", 10000.0), ("rope_scaling", {"rope_type": "linear", "factor": 8.0}))),
]}


def dense_equivalent(spec: ShapeSpec) -> ShapeSpec:
    """A dense model of the same total size as the mixture-of-experts `spec`: the same attention, vocabulary and
    depth, one SwiGLU MLP as wide as all experts together (intermediate = experts x expert width, the router's
    few parameters aside). What shows that a MoE decode reads its active bytes, not its total."""
    if not spec.num_experts:
        raise ModelError(f"{spec.name} is dense already: dense_equivalent takes a mixture-of-experts shape")
    from dataclasses import replace

    return replace(spec, name=f"{spec.name}-dense-equivalent", model_type="qwen3" if spec.qk_norm else "llama",
                   intermediate_size=spec.num_experts * spec.moe_intermediate_size, num_experts=0,
                   experts_per_token=0, moe_intermediate_size=0)


def _near_shape(name: str) -> str | None:
    """The shape name `name` was probably meant to be ("llama2-7b" -> "llama-2-7b"), or None."""
    import difflib

    hit = difflib.get_close_matches(str(name).lower(), list(SHAPES), n=1, cutoff=0.75)
    return hit[0] if hit else None


def shape(name: str) -> ShapeSpec:
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
    elif spec.model_type == "mixtral":
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


def build(name: str, layers: int | None = None, dtype="fp32", device="cpu", seed: int = 0,
          attn_implementation: str = "sdpa"):
    """A shape-faithful model: `name`'s published dimensions with `layers` decoder layers (default: 2) and
    seeded random weights, initialised as transformers initialises a new model. In eval mode."""
    from transformers import AutoModelForCausalLM

    spec = shape(name)
    layers = 2 if layers is None else int(layers)
    if not 1 <= layers <= spec.num_hidden_layers:
        raise ModelError(f"layers must be between 1 and {spec.num_hidden_layers} for {name}, got {layers}")
    cfg = config_for(spec, layers)
    torch.manual_seed(seed)
    with torch.device(device), _no_torch_reset():
        model = AutoModelForCausalLM.from_config(cfg, dtype=as_dtype(dtype),
                                                 attn_implementation=attn_implementation)
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


def load(name_or_path: str = EMBEDDED, dtype="fp32", device="cpu", attn_implementation: str = "sdpa",
         layers: int | None = None, trust_remote_code: bool = False, allow_pickle: bool = False,
         seed: int = 0):
    """Load any model the course supports (see the module docstring). Returns the model in eval mode."""
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
        model = AutoModelForCausalLM.from_pretrained(where, **kw)
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
