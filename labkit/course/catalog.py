"""The course's lessons in one table: each lesson's id, title, notebook and the records it writes, with the
function that summarises its main record on the index page.

Every part of the course that needs to know a lesson reads it here: the runner (which notebooks exist, in which
order), the index (titles, the record each summary reads), the claims ledger (which record a claim is judged from)
and `lesson.start` / `Run.save` (a notebook may write only the records listed for it, so a renamed record cannot
leave the index or the ledger reading a name nobody writes). A new lesson is one row in LESSONS. This module sits
below the runner, the report, the lesson plumbing and the claims, and imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from labkit import ROOT
from labkit.course import summaries as s

NOTEBOOKS_DIR = ROOT / "notebooks"

# notebook 01's record; labkit.core.planner reads it back under this name (PROFILE_EXPERIMENT, checked by a test:
# importing the planner here would load torch into the runner)
HARDWARE_PROFILE = "hardware_profile"


@dataclass(frozen=True)
class Lesson:
    id: str  # "00": the order of teaching and the prefix of the notebook and of its figures
    title: str
    notebook: str  # the notebook's file name without .ipynb, also the name `lesson.start` takes
    records: tuple[str, ...]  # every record (experiment) name it writes; the first is its main one
    summary: Callable[[dict], list[list[str]]] = s.generic  # its main record's metrics -> index rows
    reference_s: float | None = None  # seconds the ci preset took on REFERENCE's machine (labkit.course.plan)
    budget_s: float | None = None  # the ci preset's time budget of the whole lesson, where its notebook takes one

    @property
    def record(self) -> str:
        """The main record: the one the index summarises and the claims read."""
        return self.records[0]

    @property
    def path(self) -> Path:
        return NOTEBOOKS_DIR / f"{self.notebook}.ipynb"


# The machine whose ci times are each lesson's `reference_s`: the estimate of a lesson on a machine where it has not
# run yet (labkit.course.plan). The times are a `make lab` on a 2-core AMD EPYC of the Zen 3 kind (the slowest kind
# the course has met), of 2026-12-07 after 01's MoE cell went to 1 layer in ci, 03's ci to one recovery fine-tune
# and 07's INT8 pick to timing each candidate's int8 kernel before quantizing it (issue 29); the same code's runs
# on that machine varied by up to ~20% a lesson (others' load). The rates are the 2026-12-06 run's notebook-01
# profile (its fp32 matmul and best bandwidth), by which the plan scales each time to another machine's profile.
REFERENCE = {"machine": "a 2-core AMD EPYC of the Zen 3 kind (AVX2 and FMA; no AVX-512, VNNI, AVX512-BF16 or AMX)",
             "preset": "ci", "source": "make lab on a fresh clone, 2026-12-06",
             "features": {"avx2": True, "avx512": False, "vnni": False, "avx512_bf16": False, "amx": False},
             "fp32_gflops": 152.0, "bandwidth_gbps": 31.3}
# Other kinds' ci times, each with its features, its notebook-01 rates and its seconds per lesson: a machine closer
# to one of them than to REFERENCE (labkit.course.plan.reference_for: the same AMX first, then AVX512-BF16, VNNI,
# AVX-512) starts from its times. The AMX Xeon's lessons (below) ran 0.35-0.82x the Zen 3 times, where its fp32
# and bandwidth alone predict 0.70x (bf16 and int8 matrix units, which the two rates do not see).
OTHER_REFERENCES: tuple[dict, ...] = (
    {"machine": "a 2-core Intel Xeon with AMX (AVX-512, VNNI, AVX512-BF16, AMX-BF16 and AMX-INT8)", "preset": "ci",
     "source": "two make lab runs, 2026-12-07 (818 and 663 s): each lesson their mean, 00 the second run's (the first "
               "ran beside another load)",
     "features": {"avx2": True, "avx512": True, "vnni": True, "avx512_bf16": True, "amx": True},
     "fp32_gflops": 325.0, "bandwidth_gbps": 33.6,
     "times": {"00": 30, "01": 65, "02": 128, "03": 78, "04": 63, "05": 78, "06": 68, "07": 190, "08": 4, "09": 26}},
)

LESSONS: tuple[Lesson, ...] = (
    Lesson("00", "How to measure an LLM's speed", "00_methodology", ("00_baseline",), s.methodology, 54),
    Lesson("01", "What this machine can do", "01_hardware_profiling", (HARDWARE_PROFILE,), s.hardware, 150),
    Lesson("02", "Quantization", "02_quantization", ("02_quantization",), s.quantization, 227, budget_s=240),
    Lesson("03", "Pruning", "03_pruning", ("03_pruning", "03_pruning/verdicts"), s.pruning, 158),
    Lesson("04", "Parallelism", "04_parallelism", ("04_parallelism",), s.parallelism, 108),
    Lesson("05", "Continuous batching", "05_continuous_batching", ("05_continuous_batching",), s.batching, 164),
    Lesson("06", "Kernel swaps and memory", "06_kernels_and_memory",
           ("06_kernels_and_memory", "06_kernels_and_memory/verdicts"), s.kernels, 197),
    Lesson("07", "Case study: the guide's 13B stack", "07_case_study", ("07_case_study",), s.case_study,
           reference_s=231, budget_s=300),
    Lesson("08", "The claims ledger", "08_claims_ledger", ("08_claims_ledger",), s.ledger, reference_s=6),
    Lesson("09", "Serving over HTTP", "09_serving_over_http", ("09_serving_over_http",), s.serving, 40),
)


def find(key: str) -> Lesson | None:
    """A lesson by its id ("02", or "2") or its notebook name ("02_quantization"), None if there is none."""
    key = key.zfill(2) if key.isdigit() else key
    return next((les for les in LESSONS if key in (les.id, les.notebook)), None)


def lesson(key: str) -> Lesson:
    """A lesson as `find` looks it up; ValueError names the valid ones when there is none."""
    if (found := find(key)) is not None:
        return found
    raise ValueError(f"no lesson {key!r} in labkit/course/catalog.py; the lessons are "
                     f"{', '.join(les.notebook for les in LESSONS)}")


def notebooks() -> dict[str, Path]:
    """Lesson id -> notebook path, in teaching order, for the lessons whose notebook exists."""
    return {les.id: les.path for les in LESSONS if les.path.exists()}


def unlisted() -> list[Path]:
    """Numbered notebooks in NOTEBOOKS_DIR that no lesson names (a new notebook whose row is missing here)."""
    listed = {les.path.name for les in LESSONS}
    return [p for p in sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")) if p.name not in listed]


def problems(lessons: tuple[Lesson, ...] | None = None) -> list[str]:
    """What is inconsistent in the table: ids out of order or repeated, a notebook not named after its id, a
    lesson with no record, a record name two lessons write."""
    lessons = LESSONS if lessons is None else lessons
    out = []
    ids = [les.id for les in lessons]
    if ids != sorted(set(ids)):
        out.append(f"lesson ids must be unique and in teaching order, got {ids}")
    seen: dict[str, str] = {}
    for les in lessons:
        if not les.notebook.startswith(f"{les.id}_"):
            out.append(f"lesson {les.id}: notebook {les.notebook!r} must start with {les.id}_")
        if not les.records:
            out.append(f"lesson {les.id} writes no record")
        for r in les.records:
            if r in seen:
                out.append(f"record {r!r} is written by lessons {seen[r]} and {les.id}")
            seen[r] = les.id
    return out
