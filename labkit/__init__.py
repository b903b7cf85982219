"""labkit: the measurement and technique code behind the course's notebooks.

Layers (imports point downwards only): course (runner, lesson, report, catalog, claims) -> lessons (one
experiment per lesson) -> serve.api -> serve (the engine) -> techniques (quant, prune, parallel, kernels, memory,
decode) -> core (models, hardware, records, params, bench, quality, roofline, planner) -> this file (ROOT, DATA,
the version). ARCHITECTURE.md at the top of the repository says which module may import which and where a new
lesson's code goes.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


def _version() -> str:
    """The installed distribution's version (pyproject.toml's, as pip recorded it); read from pyproject.toml
    itself when labkit runs from a checkout that was never installed, so there is one place to bump it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("labkit")
    except PackageNotFoundError:
        import tomllib

        return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


__version__ = _version()


def _quiet_known_noise() -> None:
    """Drop two harmless log lines that every import of transformers prints on a CPU-only machine: torchao
    failing to load its CUDA-only kernels (mxfp8, cutlass), and torch's deprecation note about torchao's
    enums. Everything else torchao or torch logs still shows."""
    import logging

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            msg = record.getMessage()
            cuda_only = "Failed to load" in msg and ("_C_mxfp8" in msg or "_C_cutlass" in msg)
            return not (cuda_only or "is an Enum subclass and is now natively supported" in msg)

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).addFilter(_Drop())
    import warnings

    # torch.compile of a model holding torchao's quantized tensors: the compiled graph just is not kept in
    # AOTAutograd's on-disk cache (the subclass has no stable hash); compiling works the same.
    warnings.filterwarnings("ignore", message=".*does not implement _stable_hash_for_caching.*")


_quiet_known_noise()
