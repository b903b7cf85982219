"""labkit: the measurement and technique code behind the course's notebooks.

Layers (dependencies point downwards): casestudy/claims -> serve -> techniques (quant, prune, parallel,
kernels, memory) -> bench/quality -> models/hardware. See ../shared/DESIGN.md in the project's workspace.
"""

from pathlib import Path

__version__ = "0.1.0"

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
REPORTS = ROOT / "reports"
