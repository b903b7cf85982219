"""The guide's claims and code snippets as data, and the Verdict a claim gets on this machine.

Every module of this package judges claims into a Verdict, and notebook 08 shows them all; keeping the claims,
the statuses and the Verdict in one module below the judges lets each lesson's judges stay apart from the others.

Statuses (a verdict depends on measured figures only; a missing record is never guessed):
- "reproduced"
- "partly reproduced"       (the evidence says which part)
- "not reproduced"          (with the measured figure)
- "inconclusive"            (the measured effect is inside the noise floor measured in the same run, or the
                             rounds disagree: the run cannot tell)
- "not measurable here"     (the hardware the claim is about is absent; the evidence says what was measured
                             instead and what would be needed, e.g. "an A100: run notebook 06 with device=cuda")
- "not measured yet"        (no record: the notebook to run)

A judge turns its figures into Checks (one measured figure against one bar of the claim, with what it decided),
and `judged` makes the Verdict from them: the status is computed from the checks and the evidence is the checks
in words, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

REPRODUCED = "reproduced"
PARTLY = "partly reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
NOT_MEASURABLE = "not measurable here"
NOT_MEASURED = "not measured yet"
STATUSES = (REPRODUCED, PARTLY, NOT_REPRODUCED, INCONCLUSIVE, NOT_MEASURABLE, NOT_MEASURED)


@dataclass(frozen=True)
class Claim:
    id: str
    section: str
    words: str  # the guide's claim, in English
    figure: str  # the guide's own figure, as it states it
    notebook: str  # the lesson that measures it
    hardware: str = ""  # the hardware the guide's figure is about, where only that hardware can show it
    needs: tuple[str, ...] = ()  # parts of a GPU's name that make a machine that hardware ("GPU": any GPU)


CLAIMS: dict[str, Claim] = {c.id: c for c in [
    Claim("C1", "intro", "7B model on one V100: about 300 ms per generated token; optimization brings it under "
          "75 ms (4x)", "300 -> 75 ms/token", "01", "a V100", ("V100",)),
    Claim("C2", "1.1", "memory bandwidth decides decode speed; A100 HBM2e 1.5 TB/s, 1.7x a V100",
          "1.7x bandwidth", "01"),
    Claim("C3", "1.1", "a 13B model needs at least two A100s with NVLink tensor parallelism to avoid running out "
          "of memory", "2x A100", "04", "A100s linked by NVLink", ("A100",)),
    Claim("C4", "1.2", "NVMe loads weights 3-5x faster than SATA; mmap loading avoids copies", "3-5x", "01"),
    Claim("C5", "2.1", "INT8 makes the model 1/4 of FP32 and keeps over 95% of accuracy", "1/4 size, >95%", "02"),
    Claim("C6", "2.1", "GPTQ and AWQ lose less accuracy than plain rounding", "GPTQ/AWQ < RTN loss", "02"),
    Claim("C7", "2.2", "magnitude pruning removes 30-50% of weights; 40% on LLaMA-7B gives 2.1x speed at 1.2% "
          "accuracy loss", "40% -> 2.1x, -1.2%", "03"),
    Claim("C8", "3.1", "above 32B, combine data, tensor and pipeline parallelism (3D)", "3D above 32B", "04",
          "several 8-GPU servers"),
    Claim("C9", "3.2", "continuous batching gives +40% throughput and 60% less latency variance than static "
          "batching", "1.4x, -60% variance", "05"),
    Claim("C10", "4.1", "calling torch.cuda.empty_cache() regularly with AMP cuts memory use by 30%", "-30% memory",
          "06", "a CUDA GPU (torch.cuda.empty_cache)", ("GPU",)),
    Claim("C11", "4.2", "FlashAttention-2 is 3x faster than plain attention and uses 40% less memory (A100)",
          "3x, -40% memory", "06", "an A100 running FlashAttention-2", ("A100",)),
    Claim("C12", "5.2", "case study, 13B: INT8 2.3x, continuous batching 1.8x throughput, FlashAttention 1.4x; "
          "TTFT 287 -> 72 ms, throughput 12.4 -> 51.3 tok/s (\"312%\")", "4.1x throughput, 4.0x TTFT", "07"),
    Claim("C13", "6", "INT4 can fall short of the accuracy that finance or medicine needs", "INT4 < INT8", "02"),
    Claim("C14", "6", "tensor parallelism that is too fine-grained costs more in communication than it saves",
          "communication > compute saved", "04"),
    Claim("C15", "6", "the first inference is 3-5x slower than steady state (cold start)", "3-5x", "00"),
    Claim("C16", "6", "a fixed batch size cannot follow a changing load", "static < continuous", "05"),
    Claim("C17", "5.1", "method: fixed hardware, the same 512-token inputs, measure TTFT and tokens/s",
          "512-token inputs", "00"),
]}


@dataclass(frozen=True)
class Snippet:
    id: str
    section: str
    wrong: str  # what the guide's code does that does not run
    right: str  # what the real API is, today


SNIPPETS: dict[str, Snippet] = {s.id: s for s in [
    Snippet("S1", "1.1", "TensorParallelStrategy(placement_strategy=..., chunk_size=...): Lightning has no such class",
            "Lightning's ModelParallelStrategy(data_parallel_size=, tensor_parallel_size=) is for training; for "
            "inference, torch.distributed.tensor.parallel.parallelize_module with a ColwiseParallel/RowwiseParallel "
            "plan (notebook 04)"),
    Snippet("S2", "2.1", "optimum.intel.INT8OptimumConfig does not exist",
            "quantization_config= takes a real config: TorchAoConfig, BitsAndBytesConfig, GPTQConfig (notebook 02)"),
    Snippet("S3", "3.1", "tensor_model_parallel_size / pipeline_model_parallel_size are Megatron names, not DeepSpeed "
            "config keys", "DeepSpeed inference takes tensor_parallel.tp_size; pipeline stages come from "
            "PipelineModule(num_stages=) in code; torch.distributed.pipelining does it in PyTorch (notebook 04)"),
    Snippet("S4", "4.1", "GradScaler scales gradients for training", "inference needs only torch.autocast, or a "
            "model cast to bf16/fp16 (notebook 06)"),
]}


@dataclass
class Verdict:
    """One claim's verdict on this machine. `measured` and `guide` are the figures side by side, `evidence` the
    sentence built from the measurement, `record` the path of the record it came from."""

    claim: str
    status: str
    evidence: str
    measured: str | None = None
    guide: str | None = None
    record: str | None = None
    machine: str | None = None

    def __post_init__(self) -> None:
        if self.claim not in CLAIMS:
            raise ValueError(f"unknown claim {self.claim!r}; the guide's claims are {list(CLAIMS)}")
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; choose one of {STATUSES}")
        if self.guide is None:
            object.__setattr__(self, "guide", CLAIMS[self.claim].figure)

    def to_dict(self) -> dict:
        return asdict(self)


GPU_MARK = "; GPU "  # how `source` writes a machine's GPUs after its CPU, and `machine_gpus` reads them back


def gpus(record: dict | None) -> list[str]:
    """The names of the GPUs in the fingerprint of the record a figure came from (none without a record)."""
    return [g.get("name", "") for g in ((record or {}).get("fingerprint") or {}).get("gpus") or []]


def source(record: dict | None) -> dict:
    """A verdict's `record` and `machine` fields from the record it was judged from (nothing without one): the
    CPU, and the GPUs where the machine has any."""
    if not record:
        return {}
    cpu, names = (record.get("fingerprint") or {}).get("cpu"), gpus(record)
    return {"record": record.get("_path"), "machine": f"{cpu}{GPU_MARK}{', '.join(names)}" if names else cpu}


def machine_gpus(machine: str | None) -> list[str]:
    """The GPU names in a verdict's `machine` (as `source` wrote them)."""
    return machine.split(GPU_MARK, 1)[1].split(", ") if machine and GPU_MARK in machine else []


def on_hardware(claim: str, gpu_names: Sequence[str]) -> bool:
    """Whether a machine with these GPUs is the hardware the claim is about (always, for a claim about any
    machine; never, for a claim whose hardware no name can show, such as several servers)."""
    c = CLAIMS[claim]
    if not c.hardware:
        return True
    return any(n == "GPU" or n.lower() in g.lower() for n in c.needs for g in gpu_names)


def not_measured(claim: str) -> Verdict:
    """The verdict of a claim whose lesson has not stored a record yet: the command that measures it."""
    nb = CLAIMS[claim].notebook
    return Verdict(claim, NOT_MEASURED, f"no record yet: run notebook {nb} (python -m labkit course --only {nb})")


# ---------------------------------------------------------------- checks: the figures a status is decided by

SAID = {REPRODUCED: "met", PARTLY: "partly met", NOT_REPRODUCED: "not met", INCONCLUSIVE: "inconclusive",
        NOT_MEASURABLE: "not measurable here"}
ROUNDS_AGREE = 0.8  # as bench.Ratio: a finding stands when at least 80% of the rounds agree with the median's


@dataclass(frozen=True)
class Check:
    """One measured figure held against one bar of a claim, and what it decided: REPRODUCED (the bar is met),
    PARTLY, NOT_REPRODUCED (missed), INCONCLUSIVE (the run cannot tell) or NOT_MEASURABLE (`why` says why).
    `words()` is how the evidence states it, so the figure that decided a status is always in the evidence."""

    what: str  # what was measured
    shown: str  # the figure as measured ("" where nothing could be)
    bar: str  # the bar it was held against
    status: str
    why: str = ""

    def words(self) -> str:
        fig = f" {self.shown}" if self.shown else ""
        return f"{self.what}{fig} ({self.bar}: {SAID[self.status]}{', ' + self.why if self.why else ''})"


def check(what: str, shown: str, bar: str, met: bool, why: str = "") -> Check:
    """A Check without noise (a size, a perplexity, a planner's count): met or not."""
    return Check(what, shown, bar, REPRODUCED if met else NOT_REPRODUCED, why)


def _side(v: float, lo: float | None, hi: float | None, beyond: str) -> str:
    if lo is not None and v < lo:
        return NOT_REPRODUCED
    return beyond if hi is not None and v > hi else REPRODUCED


def against(value: float, lo: float | None = None, hi: float | None = None, *, noise: float | None = None,
            rounds: Sequence[float] = (), beyond: str = NOT_REPRODUCED) -> tuple[str, str]:
    """Where a measured ratio stands against a claim's bar [lo, hi] (either may be None): (status, why).
    REPRODUCED inside the bar, NOT_REPRODUCED below `lo`, `beyond` above `hi`. INCONCLUSIVE when the run cannot
    tell: the rounds disagree (fewer than 80% on the median's side of a bar), or the noise band
    value / (1 + noise) .. value * (1 + noise) reaches across a bar (`noise` as measured, else bench.NOISE_FLOOR).
    A ratio inside the noise floor of 1 (no effect measured) is judged like any other: against a 1.9x bar it is a
    miss the run can tell, not an inconclusive one; against a bar near 1 its band reaches across it."""
    from labkit.core.bench import NOISE_FLOOR

    floor = NOISE_FLOOR if noise is None else noise
    status = _side(value, lo, hi, beyond)
    if len(rounds) > 1 and sum(_side(r, lo, hi, beyond) == status for r in rounds) < ROUNDS_AGREE * len(rounds):
        return INCONCLUSIVE, f"rounds disagree: {min(rounds):.2f}-{max(rounds):.2f}x"
    if _side(value / (1 + floor), lo, hi, beyond) != _side(value * (1 + floor), lo, hi, beyond):
        return INCONCLUSIVE, (f"its noise band {value / (1 + floor):.2f}-{value * (1 + floor):.2f}x "
                              f"(+-{floor:.0%}) reaches across the bar")
    return status, "above the range" if status == beyond != NOT_REPRODUCED else ""


def ratio_check(what: str, value: float, lo: float | None = None, hi: float | None = None, *,
                noise: float | None = None, rounds: Sequence[float] = (), beyond: str = NOT_REPRODUCED,
                bar: str | None = None) -> Check:
    """A Check of a measured ratio against [lo, hi], decided by `against` (noise floor, rounds)."""
    status, why = against(value, lo, hi, noise=noise, rounds=rounds, beyond=beyond)
    if bar is None:
        bar = (f"guide {lo:g}-{hi:g}x" if lo is not None and hi is not None else
               f"guide >= {lo:g}x" if lo is not None else f"guide <= {hi:g}x")
    return Check(what, f"{value:.2f}x", bar, status, why)


def combine(checks: Sequence[Check], any_of: bool = False) -> str:
    """A claim's status from its checks. Parts of one claim (`any_of` False): every part met -> reproduced;
    some met -> partly; else any missed -> not reproduced; else any inconclusive -> inconclusive; else not
    measurable here. Alternative readings of one claim (`any_of`, e.g. per phase): the best reading decides."""
    got = [c.status for c in checks]
    if not got:
        raise ValueError("a claim needs at least one check to be judged")
    if any_of:
        return next(s for s in (REPRODUCED, PARTLY, NOT_REPRODUCED, INCONCLUSIVE, NOT_MEASURABLE) if s in got)
    if all(s == REPRODUCED for s in got):
        return REPRODUCED
    if REPRODUCED in got or PARTLY in got:
        return PARTLY
    return next(s for s in (NOT_REPRODUCED, INCONCLUSIVE, NOT_MEASURABLE) if s in got)


def judged(claim: str, checks: Sequence[Check], *, head: str = "", tail: str = "", measured: str | None = None,
           record: dict | None = None, rule: Callable[[Sequence[Check]], str] = combine) -> Verdict:
    """The Verdict from a claim's checks: its status by `rule` (a function of the checks only) and its evidence
    the checks in words, between `head` (what was measured, context) and `tail` (what the checks cannot say)."""
    ev = "; ".join(c.words() for c in checks)
    return Verdict(claim, rule(checks), f"{head}: {ev}{tail}" if head else f"{ev}{tail}", measured=measured,
                   **source(record))
