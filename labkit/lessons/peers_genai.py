"""Peers, continued: OpenVINO GenAI and ONNX Runtime GenAI beside llama.cpp and CTranslate2 (labkit.lessons.peers).

Both runtimes install into the course's environment; OpenVINO's converter (optimum-intel with nncf) does not: it
pins transformers < 5.6, so it lives in its own virtual environment (labkit.lessons.peer_runtimes.side_tool) and
runs as a subprocess with an argument list. ONNX Runtime GenAI's model builder runs in the course's environment.
Both convert a saved Hugging Face folder (`peers.save_hf`) offline: HF_HUB_OFFLINE=1, nothing is downloaded.

- `to_openvino`: `optimum-cli export openvino --weight-format fp32|int8|int4` (nncf's weight compression: int8
  per channel; int4 asymmetric in groups of 128 with the embedding and the head kept at int8).
- `to_ort`: `python -m onnxruntime_genai.models.builder -p fp32|int8|int4 -e cpu` (int8 and int4 are MatMulNBits
  blocks of 32 on the linear layers and the head; the embedding stays fp32).
- `OpenVINORunner` and `ORTGenAIRunner` generate exactly n greedy tokens (EOS suppressed until then, as
  `bench.generate_timed` does) with a timestamp per token: TTFT is the prefill, the rest decode.
- `same_tokens` converts a model at fp32 and compares its greedy tokens with transformers'. `genai_paths` runs it on
  the trained embedded model before converting anything else: an engine whose tokens disagree is a row
  "skipped: disagrees ...", never timed as if it computed the same model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from labkit.core.bench import RequestTiming
from labkit.lessons import peer_batch, peer_memory
from labkit.lessons.peer_runtimes import Contender, agree, convert_rows, missing, side_tool

ENGINES = ("openvino-genai", "onnxruntime-genai")
KINDS = {"openvino-genai": ("fp32", "int8", "int4"), "onnxruntime-genai": ("int4", "int8", "fp32")}
BITS = {"fp32": 32, "int8": 8, "int4": 4}  # of the linear layers, as CTranslate2's rows give them (scales apart)
CONVERT_TIMEOUT_S = 3600


def _run(argv: list[str], log: Path, what: str) -> None:
    """`argv` (a list, never a shell string) with its output in `log`; a failure raises with the log's tail."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # convert, never download
    with open(log, "w", encoding="utf-8") as f:
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=CONVERT_TIMEOUT_S).returncode
    if rc != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{what} failed (exit {rc}): {' | '.join(tail)[-240:]}")


def to_openvino(hf_folder: str | Path, out: str | Path, kind: str) -> Path:
    """optimum-intel's exporter (from its own venv) writes `hf_folder` as an OpenVINO model in `kind`."""
    if kind not in BITS:
        raise ValueError(f"unknown OpenVINO weight format {kind!r}; choose one of {list(BITS)}")
    out = Path(out)
    _run([str(side_tool("openvino-genai")), "export", "openvino", "--model", str(hf_folder), "--task",
          "text-generation-with-past", "--weight-format", kind, str(out)], out.with_suffix(".log"),
         f"optimum-cli export openvino --weight-format {kind}")
    return out


def to_ort(hf_folder: str | Path, out: str | Path, kind: str) -> Path:
    """ONNX Runtime GenAI's model builder (in this environment) writes `hf_folder` as an ONNX model in `kind`."""
    if kind not in BITS:
        raise ValueError(f"unknown ONNX Runtime GenAI precision {kind!r}; choose one of {list(BITS)}")
    out = Path(out)
    _run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_folder), "-o", str(out), "-p", kind,
          "-e", "cpu", "-c", str(out.with_name(out.name + "-cache"))], out.with_suffix(".log"),
         f"onnxruntime_genai.models.builder -p {kind}")
    return out


def openvino_bytes(folder: Path) -> float:
    """Bytes a decode step reads: every constant of the OpenVINO model but the token embedding's (a lookup)."""
    import openvino as ov

    model = ov.Core().read_model(str(Path(folder) / "openvino_model.xml"))
    return float(sum(op.get_byte_size() for op in model.get_ops()
                     if op.get_type_name() == "Constant" and "embed_tokens" not in op.get_friendly_name()))


def ort_bytes(folder: Path) -> float:
    """Bytes a decode step reads: every initializer of the ONNX model but the token embedding (a lookup)."""
    import onnx

    model = onnx.load(str(Path(folder) / "model.onnx"), load_external_data=False)
    total = 0
    for t in model.graph.initializer:
        if "embed_tokens" not in t.name:
            ext = {e.key: e.value for e in t.external_data}
            total += int(ext["length"]) if "length" in ext else len(t.raw_data)
    return float(total)


class OpenVINORunner:
    """Greedy generation through openvino_genai.LLMPipeline on the CPU, prefix caching off (every request computes
    its prefill, as the other engines do): token ids in (an ov.Tensor), exactly n tokens out, a timestamp per token
    from a streamer. `precision` sets INFERENCE_PRECISION_HINT ("f32" for the
    fp32 rows and the check; None leaves OpenVINO's choice for this CPU)."""

    def __init__(self, path: str | Path, threads: int | None = None, precision: str | None = None):
        import openvino_genai

        self.path = Path(path)
        props = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
        if precision:
            props["INFERENCE_PRECISION_HINT"] = precision
        # Prefix caching off: on by default, it keeps a prompt's KV blocks, so the same prompt again (every round)
        # skipped its prefill: 3.5 ms against 127 ms for 512 tokens, measured. The other engines recompute it.
        self.scheduler = openvino_genai.SchedulerConfig()
        self.scheduler.enable_prefix_caching = False
        self.pipe = openvino_genai.LLMPipeline(str(path), "CPU", scheduler_config=self.scheduler, **props)

    def generate(self, ids: torch.Tensor, new_tokens: int) -> tuple[RequestTiming, list[int]]:
        import openvino as ov
        import openvino_genai

        class Stamps(openvino_genai.StreamerBase):  # called as each token is made
            def __init__(self):
                super().__init__()
                self.tokens, self.times = [], []

            def write(self, token):
                now = time.perf_counter()
                for t in token if isinstance(token, list) else [token]:
                    self.tokens.append(int(t))
                    self.times.append(now)
                return openvino_genai.StreamingStatus.RUNNING

            def end(self):
                pass

        cfg = openvino_genai.GenerationConfig()
        cfg.max_new_tokens = cfg.min_new_tokens = new_tokens
        cfg.do_sample = False
        stamps, prompt = Stamps(), ov.Tensor(ids.to(torch.int64).numpy())
        start = time.perf_counter()
        self.pipe.generate(prompt, cfg, stamps)
        return RequestTiming(start=start, token_times=stamps.times, prompt_tokens=ids.shape[1]), stamps.tokens

    def generate_batch(self, ids: torch.Tensor, new_tokens: int) -> list[list[int]]:
        """B prompts of the same length at once (tokenized inputs of B rows), exactly n greedy tokens each."""
        import openvino as ov
        import openvino_genai

        cfg = openvino_genai.GenerationConfig()
        cfg.max_new_tokens = cfg.min_new_tokens = new_tokens
        cfg.do_sample = False
        ids64 = ids.to(torch.int64)
        inputs = openvino_genai.TokenizedInputs(ov.Tensor(ids64.numpy()), ov.Tensor(torch.ones_like(ids64).numpy()))
        return [[int(t) for t in row] for row in self.pipe.generate(inputs, cfg).tokens]


class ORTGenAIRunner:
    """Greedy generation through onnxruntime_genai's Generator: append_tokens runs the prefill, each
    generate_next_token picks a token (and runs the step for the one before it); exactly n tokens."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime_genai as og

        self.path = Path(path)
        config = og.Config(str(path))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads or torch.get_num_threads(), "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)

    def generate(self, ids: torch.Tensor, new_tokens: int) -> tuple[RequestTiming, list[int]]:
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.model)
        length = ids.shape[1] + new_tokens
        params.set_search_options(do_sample=False, max_length=length, min_length=length)
        gen = og.Generator(self.model, params)
        out, times = [], []
        start = time.perf_counter()
        gen.append_tokens(ids[0].to(torch.int32).numpy())
        for _ in range(new_tokens):
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
            times.append(time.perf_counter())
        return RequestTiming(start=start, token_times=times, prompt_tokens=ids.shape[1]), out

    def generate_batch(self, ids: torch.Tensor, new_tokens: int) -> list[list[int]]:
        """B prompts of the same length at once (the Generator's batch_size), exactly n greedy tokens each."""
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.model)
        length = ids.shape[1] + new_tokens
        params.set_search_options(do_sample=False, max_length=length, min_length=length, batch_size=ids.shape[0])
        gen = og.Generator(self.model, params)
        gen.append_tokens(ids.to(torch.int32).numpy())
        for _ in range(new_tokens):
            gen.generate_next_token()
        return [[int(t) for t in gen.get_sequence(i)][ids.shape[1]:] for i in range(ids.shape[0])]


def convert(engine: str, hf_folder: Path, out: Path, kind: str) -> tuple[object, float]:
    """`hf_folder` converted for `engine` in `kind` and a runner opened on it: (runner, bytes read per token)."""
    if engine == "openvino-genai":
        path = to_openvino(hf_folder, out, kind)
        return OpenVINORunner(path, precision="f32" if kind == "fp32" else None), openvino_bytes(path)
    if engine == "onnxruntime-genai":
        path = to_ort(hf_folder, out, kind)
        return ORTGenAIRunner(path), ort_bytes(path)
    raise ValueError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")


def same_tokens(engine: str, hf_folder: Path, ids: torch.Tensor, reference: list[int], workdir: Path):
    """Does `engine` compute the model in `hf_folder`? Its fp32 conversion's greedy tokens against `reference`
    (transformers' on the same ids): (equal, index of the first difference or None)."""
    runner, _ = convert(engine, hf_folder, Path(workdir) / f"check-{engine}", "fp32")
    return agree(reference, runner.generate(ids, len(reference))[1])


def embedded_check(engine: str, workdir: Path, new_tokens: int = 16) -> tuple[bool, int | None]:
    """`same_tokens` on the trained embedded model (its top tokens are not near-ties, unlike random weights)."""
    from labkit.core import models
    from labkit.core.bench import generate_timed

    model, tok = models.load(), models.load_tokenizer()
    ids = tok("def main(args):\n    ", return_tensors="pt").input_ids
    with torch.inference_mode():
        ref = generate_timed(model, ids, new_tokens)[1][0, ids.shape[1]:].tolist()
    return same_tokens(engine, models.resolve(models.EMBEDDED), ids, ref, workdir)


def genai_paths(hf_folder, workdir: str | Path, kinds: dict | None = None, progress: bool = True) -> list[Contender]:
    """A row per engine x kind (`kinds`, default KINDS): skipped with the install command where the engine is
    missing, with the measured difference where its fp32 tokens disagree with transformers' on the embedded model,
    with the error where a conversion fails; else timed-ready (runner, bytes per token, cold start: converting
    and loading). `hf_folder`: the model to time as a Hugging Face folder, or a callable that saves it once."""

    workdir = Path(workdir)
    rows: list[Contender] = []
    for engine, todo in (KINDS if kinds is None else kinds).items():
        why = missing(engine)
        if not why and todo:
            try:
                agree, first = embedded_check(engine, workdir)
                if not agree:
                    why = (f"disagrees with transformers: its fp32 greedy tokens on the embedded model differ from "
                           f"token {first} on, so it is not timed")
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                why = f"its check did not run: {e}"[:300]

        def make(kind, engine=engine) -> Contender:
            folder = hf_folder() if callable(hf_folder) else Path(hf_folder)
            runner, nbytes = convert(engine, folder, workdir / f"{engine}-{kind}", kind)
            kwargs = {"precision": "f32"} if engine == "openvino-genai" and kind == "fp32" else {}
            path = getattr(runner, "path", None)  # where a fresh process opens it again (labkit.lessons.peer_memory)
            return Contender("", "", BITS[kind], nbytes, runner.generate,
                             reopen=peer_memory.reopen(engine, type(runner), path, **kwargs) if path else None,
                             batch=peer_batch.of(runner, engine))

        rows += convert_rows(engine, todo, make, why, progress)
    return rows
