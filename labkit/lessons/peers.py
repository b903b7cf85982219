"""Peers: the same model through llama.cpp, CTranslate2, OpenVINO GenAI and ONNX Runtime GenAI, timed side by side
with labkit's own fast paths in rotating rounds (labkit.core.bench.run_rounds), after a check that each conversion
computes the same model (greedy tokens of the trained embedded model equal transformers').

Every peer is an optional extra (README, "Peers"; install commands and `missing` in labkit.lessons.peer_runtimes): a
peer that is not installed is a row "skipped: <reason>" with the command that installs it, never a guess. OpenVINO
GenAI and ONNX Runtime GenAI are converted and run by labkit.lessons.peers_genai.

- `to_gguf` writes the model as a GGUF file with the `gguf` package (llama.cpp's own file library): the tensors
  under llama.cpp's names, the query and key rows permuted as llama.cpp's converter does, and no tokenizer (the
  course feeds token ids). `quantize_gguf` makes bf16 / q8_0 / q4_0 / q4_K_M from it with llama.cpp's quantizer.
- `to_ct2` converts a saved Hugging Face folder with CTranslate2's converter.
- `LlamaCppRunner` and `CT2Runner` generate exactly n greedy tokens with a timestamp per token, like
  `labkit.core.bench.generate_timed`.
- `compare` is `python -m labkit peers`: labkit's paths and the peers on one shape, one table.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from labkit.core.bench import RequestTiming
from labkit.core.units import mib
from labkit.lessons import peer_batch, peer_memory, peer_verdicts, peers_genai
from labkit.lessons.peer_runtimes import INSTALL, LABKIT_PATHS, Contender, agree, convert_rows, missing

EXPERIMENT = "peers"  # the record `python -m labkit peers` writes; notebook 02 shows the latest
GGUF_TYPES = {"f32": 0, "q4_0": 2, "q8_0": 7, "q4_K_M": 15, "bf16": 32}  # llama.h's LLAMA_FTYPE_* (quantize)
GGUF_BITS = {"f32": 32, "bf16": 16, "q8_0": 8.5, "q4_0": 4.5}  # per weight, scales included; q4_K_M's: the file's


# ---------------------------------------------------------------- conversion

def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face stores each head's rotary pairs as two halves; llama.cpp interleaves them."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_gguf(model: nn.Module, path: str | Path) -> Path:
    """`model` (a Llama in transformers) as an fp32 GGUF file at `path`, readable by llama.cpp."""
    import gguf

    cfg = model.config
    if cfg.model_type != "llama":
        raise ValueError(f"to_gguf writes Llama models; this one is {cfg.model_type!r}")
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    path = Path(path)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(rope))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(GGUF_TYPES["f32"])
    w.add_tokenizer_model("none")  # token ids in, token ids out: no tokenizer needed to time or compare

    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    sd = model.state_dict()
    tensors = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"],
               "output.weight": sd["lm_head.weight"]}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = _permute(t, heads)
            elif gg == "attn_k":
                t = _permute(t, kv_heads)
            tensors[f"blk.{i}.{gg}.weight"] = t
    for name, t in tensors.items():
        w.add_tensor(name, t.detach().float().contiguous().cpu().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def quantize_gguf(src: str | Path, dst: str | Path, kind: str, threads: int | None = None) -> Path:
    """llama.cpp's quantizer (llama_model_quantize, what `llama-quantize` runs): `kind` in GGUF_TYPES. As in
    llama-quantize, q4_0 keeps the output head at a higher precision (Q6_K)."""
    import llama_cpp

    if kind not in GGUF_TYPES:
        raise ValueError(f"unknown GGUF type {kind!r}; choose one of {list(GGUF_TYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = GGUF_TYPES[kind]
    params.nthread = threads or torch.get_num_threads()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize to {kind} failed (return code {rc})")
    return Path(dst)


def save_hf(model: nn.Module, folder: str | Path, tokenizer_from: str | Path | None = None) -> Path:
    """`model` saved as a Hugging Face folder (safetensors). CTranslate2's converter reads a vocabulary from a
    tokenizer: the embedded model's is copied when the model has none (its ids beyond that vocabulary are padded
    by the converter)."""
    import shutil

    from labkit.core.models import EMBEDDED, MODELS_DIR

    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    src = Path(tokenizer_from) if tokenizer_from else MODELS_DIR / EMBEDDED
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (src / name).exists() and not (folder / name).exists():
            shutil.copy(src / name, folder / name)
    return folder


def to_ct2(hf_folder: str | Path, out: str | Path, quantization: str) -> Path:
    """CTranslate2's converter: the saved Hugging Face folder as a CTranslate2 model stored in `quantization`
    ("int8", "bfloat16", "float32", ...)."""
    from ctranslate2.converters import TransformersConverter

    return Path(TransformersConverter(str(hf_folder)).convert(str(out), quantization=quantization, force=True))


# ---------------------------------------------------------------- runners

class LlamaCppRunner:
    """Greedy generation through llama.cpp (llama-cpp-python's low-level calls): one prompt, exactly n tokens."""

    def __init__(self, path: str | Path, n_ctx: int, threads: int | None = None, n_batch: int = 512):
        import llama_cpp

        self.path = Path(path)
        threads = threads or torch.get_num_threads()
        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, n_threads=threads,
                                   n_threads_batch=threads, logits_all=False, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def generate(self, ids: torch.Tensor, new_tokens: int) -> tuple[RequestTiming, list[int]]:
        import numpy as np

        prompt = [int(t) for t in ids[0].tolist()]
        self.llm.reset()  # its next eval drops the cached positions past the new start
        start = time.perf_counter()
        self.llm.eval(prompt)
        out, times = [], []
        for i in range(new_tokens):  # the last position's logits (llama-cpp-python keeps them only with logits_all)
            tok = int(np.argmax(np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.n_vocab,))))
            out.append(tok)
            times.append(time.perf_counter())
            if i + 1 < new_tokens:
                self.llm.eval([tok])
        return RequestTiming(start=start, token_times=times, prompt_tokens=len(prompt)), out


def _ct2_vocabulary(folder: Path) -> list[str]:
    import json

    if (folder / "vocabulary.json").exists():
        return json.loads((folder / "vocabulary.json").read_text(encoding="utf-8"))
    return (folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")


class CT2Runner:
    """Greedy generation through CTranslate2's Generator: one prompt, exactly n tokens, a timestamp per token
    (generate_tokens yields each token as it is made)."""

    def __init__(self, path: str | Path, compute_type: str, threads: int | None = None):
        import ctranslate2

        self.path = Path(path)
        self.gen = ctranslate2.Generator(str(path), device="cpu", compute_type=compute_type,
                                         intra_threads=threads or torch.get_num_threads())
        self.vocab = _ct2_vocabulary(self.path)  # its prompts are token strings; it answers with ids

    def generate(self, ids: torch.Tensor, new_tokens: int) -> tuple[RequestTiming, list[int]]:
        prompt = [self.vocab[int(t)] for t in ids[0].tolist()]
        start = time.perf_counter()
        out, times = [], []
        for step in self.gen.generate_tokens(prompt, max_length=new_tokens, sampling_topk=1, end_token=[],
                                             static_prompt=None):
            out.append(int(step.token_id))
            times.append(time.perf_counter())
        return RequestTiming(start=start, token_times=times, prompt_tokens=len(prompt)), out

    def generate_batch(self, ids: torch.Tensor, new_tokens: int) -> list[list[int]]:
        """B prompts of the same length at once (generate_batch), exactly n greedy tokens each."""
        prompts = [[self.vocab[int(t)] for t in row] for row in ids.tolist()]
        res = self.gen.generate_batch(prompts, max_length=new_tokens, min_length=new_tokens, sampling_topk=1,
                                      end_token=[], include_prompt_in_result=False)
        return [[int(t) for t in r.sequences_ids[0]] for r in res]


# ---------------------------------------------------------------- the comparison

def _gguf_bytes(path: Path) -> float:
    """Bytes a decode step reads from a GGUF file: every tensor but the token embedding (a lookup)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    return float(sum(int(t.n_bytes) for t in r.tensors if t.name != "token_embd.weight"))


def _gguf_bits(path: Path) -> float:
    """Bits per weight of a GGUF file's tensors but the token embedding, scales included (a mixed format's
    average)."""
    import gguf

    ts = [t for t in gguf.GGUFReader(str(path)).tensors if t.name != "token_embd.weight"]
    return 8.0 * sum(int(t.n_bytes) for t in ts) / sum(int(t.n_elements) for t in ts)


def _ct2_bytes(folder: Path) -> float:
    """Bytes a decode step reads from a CTranslate2 model, as an upper bound: the whole model file, its embedding
    table included (a decode step only looks up one row of it), so its floor and fraction of the floor are upper
    bounds."""
    return float((folder / "model.bin").stat().st_size)


def peer_paths(model: nn.Module, workdir: str | Path, gguf_kinds=("bf16", "q8_0", "q4_0", "q4_K_M"),
               ct2_kinds=("int8", "bfloat16"), n_ctx: int = 1024, progress: bool = True,
               genai_kinds: dict | None = None) -> list[Contender]:
    """Convert `model` for every installed peer (skipped rows for the others) and open a runner per format. A
    format the peer refuses here (CTranslate2's bfloat16 without efficient bf16 kernels) is a skipped row.
    `genai_kinds`: {engine: formats} for OpenVINO GenAI and ONNX Runtime GenAI (default peers_genai.KINDS)."""

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cache: dict[str, Path] = {}

    def hf() -> Path:
        if "hf" not in cache:
            cache["hf"] = save_hf(model, workdir / "hf")
        return cache["hf"]

    def gguf_path(kind: str) -> Contender:
        if "f32" not in cache:
            cache["f32"] = to_gguf(model, workdir / "model-f32.gguf")
        dst = cache["f32"] if kind == "f32" else quantize_gguf(cache["f32"], workdir / f"model-{kind}.gguf", kind)
        runner = LlamaCppRunner(dst, n_ctx=n_ctx)
        return Contender("", "", GGUF_BITS.get(kind) or _gguf_bits(dst), _gguf_bytes(dst), runner.generate,
                         reopen=peer_memory.reopen("llama.cpp", LlamaCppRunner, dst, n_ctx=n_ctx),
                         batch=peer_batch.of(runner, "llama.cpp"))

    def ct2_path(kind: str) -> Contender:
        dst = to_ct2(hf(), workdir / f"ct2-{kind}", kind)
        bits = {"int8": 8, "bfloat16": 16, "float32": 32}.get(kind)
        runner = CT2Runner(dst, compute_type=kind)
        return Contender("", "", bits, _ct2_bytes(dst), runner.generate,
                         reopen=peer_memory.reopen("ctranslate2", CT2Runner, dst, compute_type=kind),
                         batch=peer_batch.of(runner, "ctranslate2"))

    paths = convert_rows("llama.cpp", gguf_kinds, gguf_path, missing("llama.cpp"), progress)
    paths += convert_rows("ctranslate2", ct2_kinds, ct2_path, missing("ctranslate2"), progress)
    return paths + peers_genai.genai_paths(hf, workdir, genai_kinds, progress)


KNOWN_PATHS = ("fp32", *LABKIT_PATHS)


def labkit_paths(model: nn.Module, ids: torch.Tensor, new_tokens: int, names=LABKIT_PATHS,
                 progress: bool = True) -> list[Contender]:
    """labkit's batch-1 paths on `model` (fp32): eager through transformers' generate, "+compile" through
    labkit.techniques.decode.StaticDecoder under torch.compile, as notebook 02 runs them (its inductor options, prefill
    compiled or eager as measured faster on `ids`, and not timed if its greedy tokens differ from eager's by more
    than rounding). Every linear is quantized, the head included (llama.cpp quantizes its head too). A method
    that cannot run here is a skipped row."""
    from labkit.core.bench import generate_timed
    from labkit.core.roofline import decode_read_bytes, measured_parts
    from labkit.lessons.quantization import COMPILE_OPTIONS, _compiled_disagrees, _speed_runners
    from labkit.techniques.decode import StaticDecoder

    methods = list(dict.fromkeys(n.removesuffix("+compile") for n in names
                                 if n.removesuffix("+compile") not in ("bf16", "fp32")))  # those two are always made
    runners, rows = _speed_runners(model, methods, progress)  # notebook 02's copies: base dtype, head included
    out = []
    for name in names:
        method = name.removesuffix("+compile")
        if method not in runners:
            out.append(Contender(f"labkit {name}", "labkit", skipped=rows[method]["status"]))
            continue
        t0 = time.perf_counter()
        m = runners[method]
        bits, read = 8 * rows[method]["bytes_per_weight"], decode_read_bytes(measured_parts(m, tokens=1))
        if name.endswith("+compile"):
            dec = StaticDecoder(m, max_len=ids.shape[1] + new_tokens, compile=True, options=COMPILE_OPTIONS.get(method))
            base = runners["fp32"] if method == "bf16" else runners[rows[method]["base_dtype"]]
            wrong, _ = _compiled_disagrees(m, dec, ids, new_tokens, base)
            if wrong:
                out.append(Contender(f"labkit {name}", "labkit", bits, read, skipped=f"wrong tokens: {wrong}"))
                continue
            dec.choose_prefill(ids)
            run = (lambda d: (lambda ids, n: _tokens(d.generate(ids, n))))(dec)
            batch = peer_batch.NO_BATCH["labkit+compile"]
        else:
            run = (lambda mod: (lambda ids, n: _tokens(generate_timed(mod, ids, n))))(m)
            batch = peer_batch.hf(m)
        cold = rows[method].get("quant_seconds", 0.0) + time.perf_counter() - t0  # quantizing, compiling
        out.append(Contender(f"labkit {name}", "labkit", bits, read, run, cold_s=cold, batch=batch))
    return out


def _tokens(result) -> tuple[RequestTiming, list[int]]:
    rt, ids = result
    return rt, ids[0, rt.prompt_tokens:].tolist()


def survivors(paths: list[Contender], prompt_len: int, vocab_size: int, seed: int, progress: bool) -> list[Contender]:
    """`paths` with each peer row that crashes its process (peer_memory.crashes: one request in a process of its
    own, before it is ever called in this one) turned into a skipped row saying so, with what to do about it
    (peer_runtimes.CRASH_HINTS)."""
    from labkit.core.progress import tqdm
    from labkit.lessons.peer_runtimes import CRASH_HINTS

    out = []
    for p in tqdm(paths, desc="each peer row once, in a process of its own", disable=not progress):
        why = None
        if not p.skipped and p.reopen is not None:
            why = peer_memory.crashes({**p.reopen, "threads": torch.get_num_threads(), "prompt_len": prompt_len,
                                       "vocab_size": vocab_size, "seed": seed})
        hint = CRASH_HINTS.get(p.engine)
        out.append(p if why is None else
                   Contender(p.name, p.engine, p.bits, p.bytes_read, skipped=why + (f"; {hint}" if hint else "")))
    return out


def compare(shape: str = "tinyllama-1.1b", layers: int = 8, prompt_len: int = 512, new_tokens: int = 32,
            repeats: int = 3, seed: int = 0, labkit: tuple[str, ...] = LABKIT_PATHS, workdir: str | Path | None = None,
            hw=None, progress: bool = True, hw_source: str = "notebook 01's profile", measure_memory: bool = True,
            batch: int = 8, batch_prompt: int = 64):
    """Every labkit path and every installed peer on the same `shape` model (seeded random weights), batch 1:
    prefill of `prompt_len` tokens (tok/s) and decode (tok/s), timed in rotating rounds; the first call of each
    path (compilation, kernel set-up) is its cold start, apart. With `hw` (a roofline Card) each row also gets
    its decode floor (its own bytes / the card's bandwidth) and the fraction reached (`floor_fields`: a floor that
    was beaten is re-derived, its reason beside the fraction; `hw_source` names the card's). With `measure_memory`,
    after the rounds, each row's memory serving one request in a process of its own (labkit.lessons.peer_memory:
    `loaded MiB`, `peak MiB`; a row it could not measure has a `memory` cell saying why). With `batch` > 1, each
    runtime that batches is also timed serving `batch` requests of `batch_prompt` tokens at once against one of them
    (labkit.lessons.peer_batch: `batch-B tok/s`, `batching gain`; those rounds in `table.attrs["batch_rounds"]`).
    Returns (table, rounds)."""
    import tempfile

    import pandas as pd

    from labkit.core import models
    from labkit.core.bench import run_rounds
    from labkit.core.models import prompt_ids

    model = models.build(shape, layers=layers, seed=seed).float().eval()
    ids = prompt_ids(prompt_len, vocab_size=model.config.vocab_size, seed=seed)
    tmp = tempfile.TemporaryDirectory(prefix="labkit-peers-") if workdir is None else None
    work = Path(tmp.name if tmp else workdir)
    try:
        with torch.inference_mode():
            paths = labkit_paths(model, ids, new_tokens, labkit, progress=progress)
        paths += peer_paths(model, work, n_ctx=prompt_len + new_tokens + 8, progress=progress)
        paths = survivors(paths, prompt_len, model.config.vocab_size, seed, progress)
        live = {p.name: p for p in paths if not p.skipped}

        def timed(p):
            rt, _ = p.run(ids, new_tokens)
            return {"ttft": rt.ttft, "tpot": rt.tpot}

        callers = {name: (lambda p=p: timed(p)) for name, p in live.items()}
        with torch.inference_mode():
            r = run_rounds(callers, repeats, progress=progress)
        batched, batch_rounds = {}, None
        if batch > 1:
            batched, batch_rounds = peer_batch.measure([p for p in paths if p.name in callers], batch, batch_prompt,
                                                       new_tokens, repeats, model.config.vocab_size, seed, progress)
        spec = {"shape": shape, "layers": layers, "seed": seed}
        memory = peer_memory.of_rows([p for p in paths if p.name in callers], spec, prompt_len, new_tokens,
                                     model.config.vocab_size, progress) if measure_memory else {}
    finally:
        if tmp is not None:
            tmp.cleanup()
    rows = []
    timed = [(p, r.median(p.name, "tpot")) for p in paths if p.name in callers and p.bytes_read]
    floors = peer_verdicts.floor_fields(timed, hw, hw_source) if hw is not None else {}
    for p in paths:
        row = {"path": p.name, "engine": p.engine, "bits/weight": p.bits,
               "status": f"skipped: {p.skipped}" if p.skipped else "ok"}
        if p.name in callers:
            ttft, tpot = r.median(p.name, "ttft"), r.median(p.name, "tpot")
            row.update({"prefill tok/s": prompt_len / ttft, "decode tok/s": 1 / tpot,
                        "MiB read per token": mib(p.bytes_read), "cold start s": p.cold_s, **floors.get(p.name, {}),
                        **{k: v for k, v in memory.get(p.name, {}).items() if k != "peak from"},
                        **batched.get(p.name, {})})
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs.update({"shape": shape, "layers": layers, "prompt_len": prompt_len, "new_tokens": new_tokens,
                        "threads": torch.get_num_threads(), "load": r.load, "batch": batch if batched else None,
                        "batch_prompt": batch_prompt, "batch_rounds": batch_rounds})
    return table, r


def check_tokens(model: nn.Module, tokenizer, prompt: str, new_tokens: int, workdir: str | Path,
                 engines=tuple(INSTALL)) -> dict:
    """Does each installed peer compute the same model? Greedy tokens of `model` (fp32, a trained one: its top
    tokens are not near-ties) from transformers and from each of `engines` at fp32 (llama.cpp: an f32 GGUF,
    CTranslate2: float32, the GenAI runtimes: labkit.lessons.peers_genai.same_tokens). Returns {engine: (tokens
    equal, first difference or None)} for the peers that ran, and "skipped: ..." for the rest."""
    from labkit.core.bench import generate_timed

    ids = tokenizer(prompt, return_tensors="pt").input_ids
    ref = generate_timed(model, ids, new_tokens)[1][0, ids.shape[1]:].tolist()
    workdir = Path(workdir)
    out: dict[str, object] = {e: f"skipped: {missing(e)}" for e in engines if missing(e)}
    hf = None
    for engine in (e for e in engines if e not in out):
        if engine == "llama.cpp":
            got = LlamaCppRunner(to_gguf(model, workdir / "check-f32.gguf"), n_ctx=ids.shape[1] + new_tokens + 8)
            out[engine] = agree(ref, got.generate(ids, new_tokens)[1])
            continue
        hf = hf or save_hf(model, workdir / "check-hf", tokenizer_from=getattr(tokenizer, "name_or_path", None))
        if engine == "ctranslate2":
            got = CT2Runner(to_ct2(hf, workdir / "check-ct2", "float32"), compute_type="float32")
            out[engine] = agree(ref, got.generate(ids, new_tokens)[1])
        else:
            out[engine] = peers_genai.same_tokens(engine, hf, ids, ref, workdir)
    out["reference"] = ref
    return out


def latest_lines(root=None) -> tuple[object, list[str]]:
    """For notebook 02: the latest `python -m labkit peers` record as (table, lines), or (None, lines saying how
    to make one). The lines name when and on which CPU it was measured, and warn when that is not this one."""
    import pandas as pd

    from labkit.core.floors import reasons
    from labkit.core.hardware import cpu_model
    from labkit.core.records import latest

    status = [f"{engine}: {missing(engine) or 'installed'}" for engine in INSTALL]
    rec = latest(EXPERIMENT, root)
    if rec is None:
        return None, [*status, "no peers record yet: run `python -m labkit peers` (a few minutes; needs the peers "
                      "installed, see the README's 'Peers' section), then rerun this cell"]
    cpu = rec.get("fingerprint", {}).get("cpu", "?")
    c = rec["config"]
    head = (f"measured {rec['time'][:16]} on {cpu}, {c['shape']} with {c['layers']} layer(s), {c['prompt_len']}-token "
            f"prompt, {c['new_tokens']} new tokens, {c['threads']} thread(s)")
    if cpu != cpu_model():
        head += f" - NOT this machine ({cpu_model()}): rerun `python -m labkit peers` here"
    table = pd.DataFrame(rec["metrics"]["table"])
    return table, [*status, head, *rec["metrics"]["targets"], *reasons(table, "path")]


def profile(shape: str = "tinyllama-1.1b", layers: int = 8, names=("bf16+compile",), prompt_len: int = 16,
            new_tokens: int = 8, seed: int = 0, top: int = 8, progress: bool = True) -> dict[str, list[dict]]:
    """Kernel-by-kernel profiles of labkit's decode steps (labkit.techniques.decode.profile_decode) on the same model
    `compare` times: where a path's time per token goes when it misses its peer. A short prompt, so the decode
    steps dominate."""
    from labkit.core import models
    from labkit.core.models import prompt_ids
    from labkit.techniques.decode import profile_decode

    model = models.build(shape, layers=layers, seed=seed).float().eval()
    ids = prompt_ids(prompt_len, vocab_size=model.config.vocab_size, seed=seed)
    with torch.inference_mode():
        paths = labkit_paths(model, ids, new_tokens, names, progress=progress)
    return {p.name: (profile_decode(p.run, ids, new_tokens, top) if not p.skipped else [{"op": p.skipped}])
            for p in paths}
