"""labkit: the measurement and technique code behind the course's notebooks.

Layers (dependencies point downwards): notebook plumbing (lesson, report, course) -> casestudy/claims ->
experiments -> serve -> techniques (quant, prune, parallel, kernels, memory) -> bench/quality ->
roofline/planner -> models/hardware/records. ARCHITECTURE.md at the top of the repository says which module
may import which and where a new lesson's code goes.
"""

from pathlib import Path

__version__ = "0.1.0"

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


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
