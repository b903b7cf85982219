"""The CPU runtimes `python -m labkit peers` puts beside labkit's paths: their install commands and whether each is
installed here.

Every peer is an optional extra, never in requirements.txt: its pins clash with the course's, and CI must pass
without it. A peer that is not installed is a row "skipped: <reason>" naming the command that installs it, never a
guess. llama.cpp and CTranslate2 are converted and timed (labkit.lessons.peers); OpenVINO GenAI and ONNX Runtime
GenAI are rows only so far (`NOT_CONVERTED`): labkit has no conversion path for them yet, and their rows say how to
install them or, when installed, that they are not timed by labkit.
"""

from __future__ import annotations

import importlib.util

INSTALL = {
    "llama.cpp": 'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python gguf   (builds ggml, ~15 min on 2 cores)',
    "ctranslate2": "pip install ctranslate2",
    "openvino-genai": "pip install openvino-genai optimum-intel nncf",
    "onnxruntime-genai": "pip install onnxruntime-genai onnx",
}
CONVERTERS = {"openvino-genai": "optimum-cli export openvino --weight-format fp32|int8|int4",
              "onnxruntime-genai": "python -m onnxruntime_genai.models.builder -p int4|int8 -e cpu"}
MODULES = {"llama.cpp": ("llama_cpp", "gguf"), "ctranslate2": ("ctranslate2",),
           "openvino-genai": ("openvino_genai",), "onnxruntime-genai": ("onnxruntime_genai",)}
NOT_CONVERTED = {"openvino-genai": ("fp32", "int8", "int4"), "onnxruntime-genai": ("int4", "int8")}


def missing(engine: str) -> str | None:
    """Why `engine` (a key of INSTALL) cannot run here, with the command that installs it; None when it can."""
    if engine not in INSTALL:
        raise ValueError(f"unknown peer {engine!r}; choose one of {list(INSTALL)}")
    absent = [m for m in MODULES[engine] if importlib.util.find_spec(m) is None]
    if absent:
        return f"{engine} is not installed ({', '.join(absent)} missing); install it with: {INSTALL[engine]}"
    return None


def not_converted(engine: str, why: str | None) -> str:
    """The skip reason of a NOT_CONVERTED runtime's row: not installed (`why`, with the command), or installed but
    not converted or timed by labkit yet."""
    return why or (f"{engine} is installed, but `labkit peers` does not convert models for it yet (issue #31); "
                   f"convert with `{CONVERTERS[engine]}` and time it apart")
