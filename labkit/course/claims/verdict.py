"""The guide's claims and code snippets as data, and the Verdict a claim gets on this machine.

Every module of this package judges claims into a Verdict, and notebook 08 shows them all; keeping the claims,
the statuses and the Verdict in one module below the judges lets each lesson's judges stay apart from the others.

Statuses (a verdict depends on measured figures only; a missing record is never guessed):
- "reproduced"
- "partly reproduced"       (the evidence says which part)
- "not reproduced"          (with the measured figure)
- "not measurable here"     (with what would be needed, e.g. "an A100: run notebook 06 with device=cuda")
- "not measured yet"        (no record: the notebook to run)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

REPRODUCED = "reproduced"
PARTLY = "partly reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_MEASURABLE = "not measurable here"
NOT_MEASURED = "not measured yet"
STATUSES = (REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_MEASURABLE, NOT_MEASURED)


@dataclass(frozen=True)
class Claim:
    id: str
    section: str
    words: str  # the guide's claim, in English
    figure: str  # the guide's own figure, as it states it
    notebook: str  # the lesson that measures it


CLAIMS: dict[str, Claim] = {c.id: c for c in [
    Claim("C1", "intro", "7B model on one V100: about 300 ms per generated token; optimization brings it under "
          "75 ms (4x)", "300 -> 75 ms/token", "01"),
    Claim("C2", "1.1", "memory bandwidth decides decode speed; A100 HBM2e 1.5 TB/s, 1.7x a V100",
          "1.7x bandwidth", "01"),
    Claim("C3", "1.1", "a 13B model needs at least two A100s with NVLink tensor parallelism to avoid running out "
          "of memory", "2x A100", "04"),
    Claim("C4", "1.2", "NVMe loads weights 3-5x faster than SATA; mmap loading avoids copies", "3-5x", "01"),
    Claim("C5", "2.1", "INT8 makes the model 1/4 of FP32 and keeps over 95% of accuracy", "1/4 size, >95%", "02"),
    Claim("C6", "2.1", "GPTQ and AWQ lose less accuracy than plain rounding", "GPTQ/AWQ < RTN loss", "02"),
    Claim("C7", "2.2", "magnitude pruning removes 30-50% of weights; 40% on LLaMA-7B gives 2.1x speed at 1.2% "
          "accuracy loss", "40% -> 2.1x, -1.2%", "03"),
    Claim("C8", "3.1", "above 32B, combine data, tensor and pipeline parallelism (3D)", "3D above 32B", "04"),
    Claim("C9", "3.2", "continuous batching gives +40% throughput and 60% less latency variance than static "
          "batching", "1.4x, -60% variance", "05"),
    Claim("C10", "4.1", "calling torch.cuda.empty_cache() regularly with AMP cuts memory use by 30%", "-30% memory",
          "06"),
    Claim("C11", "4.2", "FlashAttention-2 is 3x faster than plain attention and uses 40% less memory (A100)",
          "3x, -40% memory", "06"),
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


def source(record: dict | None) -> dict:
    """A verdict's `record` and `machine` fields from the record it was judged from (nothing without one)."""
    if not record:
        return {}
    return {"record": record.get("_path"), "machine": (record.get("fingerprint") or {}).get("cpu")}


def not_measured(claim: str) -> Verdict:
    """The verdict of a claim whose lesson has not stored a record yet: the command that measures it."""
    nb = CLAIMS[claim].notebook
    return Verdict(claim, NOT_MEASURED, f"no record yet: run notebook {nb} (python -m labkit course --only {nb})")
