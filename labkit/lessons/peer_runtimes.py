"""The CPU runtimes `python -m labkit peers` puts beside labkit's paths: their install commands, whether each is
installed here, and the row (`Contender`) each engine x number format becomes.

Every peer is an optional extra, never in requirements.txt, and CI must pass without it. A peer that is not
installed is a row "skipped: <reason>" naming the command that installs it, never a guess. llama.cpp and CTranslate2
are converted and timed by labkit.lessons.peers, OpenVINO GenAI and ONNX Runtime GenAI by labkit.lessons.peers_genai.
The four runtimes import in the course's environment; OpenVINO's converter (optimum-intel) pins transformers < 5.6,
so it is installed in a virtual environment of its own under `peer_venvs()` and run from there (`side_tool`).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

INSTALL = {
    "llama.cpp": 'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python gguf   (builds ggml, ~15 min on 2 cores)',
    "ctranslate2": "pip install ctranslate2",
    "openvino-genai": ("pip install openvino-genai; and its converter apart (it pins transformers<5.6): python3.11 -m "
                       "venv .peer-venvs/openvino && .peer-venvs/openvino/bin/pip install 'optimum-intel[openvino]' "
                       "nncf && .peer-venvs/openvino/bin/pip uninstall -y torchvision"),
    "onnxruntime-genai": "pip install onnxruntime-genai onnx onnx-ir",
}
# What to do when a peer's row crashes its process (labkit.lessons.peers.survivors), where the cause is known.
NO_AMX = ('CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON '
          '-DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON" pip install --force-reinstall --no-deps --no-cache-dir '
          'llama-cpp-python')
CRASH_HINTS = {
    "llama.cpp": ("on a CPU with AMX, GGML_NATIVE=ON builds ggml's AMX backend, which crashed with quantized formats "
                  f"on this course's Xeon (llama.cpp issue 20824); rebuild without it: {NO_AMX}"),
}
MODULES = {"llama.cpp": ("llama_cpp", "gguf"), "ctranslate2": ("ctranslate2",),
           "openvino-genai": ("openvino_genai", "openvino"),
           "onnxruntime-genai": ("onnxruntime_genai", "onnx", "onnx_ir")}  # the model builder imports onnx_ir
SIDE_TOOLS = {"openvino-genai": ("openvino", "optimum-cli")}  # engine -> (its venv under peer_venvs(), converter)


def peer_venvs() -> Path:
    """Where the peers' own virtual environments live: $LABKIT_PEER_VENVS, else .peer-venvs in the repository."""
    from labkit import ROOT

    return Path(os.environ.get("LABKIT_PEER_VENVS") or ROOT / ".peer-venvs").expanduser()


def side_tool(engine: str) -> Path:
    """The converter `engine` runs from its own virtual environment."""
    venv, tool = SIDE_TOOLS[engine]
    return peer_venvs() / venv / "bin" / tool


def missing(engine: str) -> str | None:
    """Why `engine` (a key of INSTALL) cannot run here, with the command that installs it; None when it can."""
    if engine not in INSTALL:
        raise ValueError(f"unknown peer {engine!r}; choose one of {list(INSTALL)}")
    absent = [m for m in MODULES[engine] if importlib.util.find_spec(m) is None]
    if absent:
        return f"{engine} is not installed ({', '.join(absent)} missing); install it with: {INSTALL[engine]}"
    if engine in SIDE_TOOLS and not side_tool(engine).exists():
        return (f"{engine} is installed but its converter is not ({side_tool(engine)} missing; set LABKIT_PEER_VENVS "
                f"if its venvs are elsewhere); install it with: {INSTALL[engine]}")
    return None


@dataclass
class Contender:
    """One engine x number format to time: `name` ("llama.cpp q4_0"), bits per weight of its layers, and a
    callable(ids, n) -> (RequestTiming, tokens); or `skipped` with the reason. `reopen`: how a fresh process opens
    the same row again (labkit.lessons.peer_memory: {"engine", "path", "kwargs"}), None where it cannot; `batch`:
    its batched call (labkit.lessons.peer_batch), or a sentence saying why it has none."""

    name: str
    engine: str
    bits: float | None = None
    bytes_read: float | None = None
    run: object = None
    skipped: str | None = None
    cold_s: float | None = None
    reopen: dict | None = None
    batch: object = None  # callable(ids [B, L], n) -> B token lists (labkit.lessons.peer_batch.of), or why not


def convert_rows(engine: str, kinds, make, why: str | None, progress: bool = True) -> list[Contender]:
    """A row per format in `kinds` of `engine`: `make(kind)` (converting and opening a runner: a Contender with its
    bits, bytes and run), timed as its cold start; every row skipped with `why` when it is not None (the engine is
    missing, or disagrees), and a format whose conversion fails a skipped row with the error."""
    import subprocess
    import time

    from labkit.core.progress import tqdm

    rows = []
    for kind in tqdm(kinds, desc=f"{engine} convert", disable=not progress or bool(why) or not kinds):
        name = f"{engine} {kind}"
        if why:
            rows.append(Contender(name, engine, skipped=why))
            continue
        t0 = time.perf_counter()
        try:
            c = make(kind)
        except (ValueError, RuntimeError, subprocess.TimeoutExpired) as e:
            rows.append(Contender(name, engine, skipped=f"{type(e).__name__}: {e}"[:300]))
            continue
        c.name, c.engine, c.cold_s = name, engine, time.perf_counter() - t0
        rows.append(c)
    return rows


def agree(ref: list[int], got: list[int]) -> tuple[bool, int | None]:
    """(`got` equals `ref`, the index of their first difference or None): a peer's greedy tokens against
    transformers'."""
    first = next((i for i, (a, b) in enumerate(zip(ref, got, strict=False)) if a != b), None)
    return ref == got, first if first is not None else (None if len(ref) == len(got) else min(len(ref), len(got)))


LABKIT_PATHS = ("bf16", "bf16+compile", "int8-dynamic-legacy", "int8-dynamic-onednn", "int8-weight-only+compile",
                "int8-dynamic+compile", "int4-rtn", "int4-rtn+compile", "bnb-nf4")  # labkit's side of `peers`
# (labkit.lessons.peers); int8-dynamic-onednn: notebook 02's fastest prefill on an AMX Xeon (5.5x fp32)
# Without bf16 and int8 matrix units (an AVX2-only CPU) bf16 and torchao's int8 paths run far from any floor (bf16
# prefill ~4.5x slower than fp32, torch._int_mm at ~6 GFLOP/s, notebook 02): with them, `peers` at a 512-token prompt
# had not reached its first round after 12 minutes on an AVX2-only EPYC. There the default is fp32 (the reference)
# and the paths with a kernel for this CPU: fbgemm's int8 (int8-dynamic-legacy) and torch's int4 weight-only kernel.
NO_UNITS_PATHS = ("fp32", "int8-dynamic-legacy", "int4-rtn")


def default_paths(units: dict | None = None) -> tuple[tuple[str, ...], str]:
    """labkit's paths `peers` times by default on this CPU, and why: all of LABKIT_PATHS where the CPU has bf16 and
    int8 matrix units (`units`: labkit.core.hardware.matrix_units()), else NO_UNITS_PATHS."""
    from labkit.core import hardware

    units = hardware.matrix_units() if units is None else units
    if units["bf16"] and units["int8"]:
        return LABKIT_PATHS, "this CPU has bf16 and int8 matrix units: every labkit path"
    lacks = " and ".join(k for k in ("bf16", "int8") if not units[k])
    return NO_UNITS_PATHS, (f"this CPU has no {lacks} matrix units: labkit's paths with a kernel for it "
                            f"({', '.join(NO_UNITS_PATHS)}); --labkit {','.join(LABKIT_PATHS[:2])},... times others")
