"""The guide's claims as data, and one function per claim that judges it from measured records.

Every lesson that tests a claim calls the function here instead of writing its own verdict, and its prose takes
the thresholds from the constants here, so the words and the code cannot drift apart. Notebook 08 reads the
latest records of every lesson and shows the whole ledger.

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
          "of memory", "2x A100", "01"),
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


def _source(record: dict | None) -> dict:
    if not record:
        return {}
    return {"record": record.get("_path"), "machine": (record.get("fingerprint") or {}).get("cpu")}


def not_measured(claim: str) -> Verdict:
    nb = CLAIMS[claim].notebook
    return Verdict(claim, NOT_MEASURED, f"no record yet: run notebook {nb} (python -m labkit course --only {nb})")


# ---------------------------------------------------------------- notebook 00

COLD_START_RANGE = (3.0, 5.0)  # C15: the first inference 3-5x slower than steady state
GUIDE_PROMPT_TOKENS = 512  # C17: the guide's method uses 512-token inputs
MIN_REPEATS = 3  # C17 as the course reads it: a median needs at least this many steady-state requests


def c15(cold_over_warm: dict[str, float], record: dict | None = None) -> Verdict:
    """C15 from measured first-call / steady-state ratios, one per technique ({"eager generate": 1.07,
    "compiled decode": 38.0}). Reproduced if every one is inside 3-5x, partly if some are."""
    if not cold_over_warm:
        return not_measured("C15")
    lo, hi = COLD_START_RANGE
    inside = {k: v for k, v in cold_over_warm.items() if lo <= v <= hi}
    listed = ", ".join(f"{k} {v:.2f}x" for k, v in cold_over_warm.items())
    status = REPRODUCED if len(inside) == len(cold_over_warm) else PARTLY if inside else NOT_REPRODUCED
    where = "" if status == REPRODUCED else (f"; inside {lo:g}-{hi:g}x: {', '.join(inside)}" if inside else
                                            f"; none inside {lo:g}-{hi:g}x")
    return Verdict("C15", status, f"first call / steady-state median: {listed}{where}", measured=listed,
                   **_source(record))


def c17(config: dict, repeats: int, fingerprint_stored: bool, record: dict | None = None) -> Verdict:
    """C17 (the guide's method) against the configuration actually measured: 512-token prompts, a fixed seed,
    the warm-up apart, a median of several requests, the machine's fingerprint stored with the numbers."""
    checks = {
        f"{GUIDE_PROMPT_TOKENS}-token prompts": config.get("prompt_tokens") == GUIDE_PROMPT_TOKENS,
        "a fixed seed": isinstance(config.get("seed"), int),
        "the cold start apart": bool(config.get("cold_start_apart")),
        f"medians of >= {MIN_REPEATS} requests": repeats >= MIN_REPEATS,
        "the fingerprint stored": fingerprint_stored,
    }
    missed = [k for k, ok in checks.items() if not ok]
    status = REPRODUCED if not missed else PARTLY if len(missed) < len(checks) else NOT_REPRODUCED
    ev = (f"prompts of {config.get('prompt_tokens')} tokens, seed {config.get('seed')}, medians of {repeats} "
          f"steady-state requests")
    ev += "; method followed" if not missed else "; not followed: " + ", ".join(missed)
    return Verdict("C17", status, ev, measured=f"{config.get('prompt_tokens')}-token prompts", **_source(record))


# ---------------------------------------------------------------- notebook 03 (pruning): C7

C7_SPARSITY = 0.4  # the guide's cut: 40% of the weights of LLaMA-7B
C7_SPEEDUP = 2.1  # the speed it claims for that cut
C7_LOSS = 0.012  # and the accuracy it claims to lose
C7_SPEED_TOLERANCE = 0.10  # a measured speed-up up to 10% below 2.1x still counts as 2.1x


def _c7_part(d: dict) -> str:
    words = (f"{d['label']}: decode {d['decode_words']}, held-out perplexity {d['ppl_change']:+.1%}")
    if d.get("agreement") is not None:
        words += f", greedy tokens agreeing with dense {d['agreement']:.1%}"
    if d.get("ppl_change_recovered") is not None:
        words += f" ({d['ppl_change_recovered']:+.1%} after the recovery fine-tune)"
    return words


def c7(magnitude: dict | None, structured: dict | None = None, record: dict | None = None) -> Verdict:
    """C7 from the measured 40% cuts. `magnitude`: the guide's method, unstructured magnitude pruning of 40% of
    the weights; `structured`: a structured cut of 40% (smaller matrices); each a dict {"label", "decode_x",
    "decode_words" (bench.Ratio.words()), "ppl_change" (relative), "agreement" (greedy tokens, optional),
    "ppl_change_recovered" (optional)}. The accuracy loss is read as the held-out perplexity increase.

    Reproduced: magnitude pruning at 40% decodes at least 2.1x faster (within 10%) and loses at most 1.2%.
    Partly reproduced: one half holds: the magnitude cut loses at most 1.2% (but brings no such speed), or a
    40% cut of either kind reaches the speed-up. Not reproduced: neither."""
    if magnitude is None and structured is None:
        return not_measured("C7")
    floor = C7_SPEEDUP * (1 - C7_SPEED_TOLERANCE)
    fast = [d for d in (magnitude, structured) if d is not None and d["decode_x"] >= floor]
    quality_kept = magnitude is not None and magnitude["ppl_change"] <= C7_LOSS
    magnitude_fast = magnitude is not None and magnitude in fast
    if quality_kept and magnitude_fast:
        status = REPRODUCED
    elif quality_kept or fast:
        status = PARTLY
    else:
        status = NOT_REPRODUCED
    parts = [_c7_part(d) for d in (magnitude, structured) if d is not None]
    held = []
    if magnitude is not None:
        held.append(f"the magnitude cut {'keeps' if quality_kept else 'does not keep'} perplexity within "
                    f"{C7_LOSS:.1%}")
    held.append(f"{'a' if fast else 'no'} 40% cut reaches {floor:.1f}x ({C7_SPEEDUP}x within "
                f"{C7_SPEED_TOLERANCE:.0%})" + (f": {', '.join(d['label'] for d in fast)}" if fast else ""))
    main = magnitude or structured
    judged = "; ".join(held)
    return Verdict("C7", status, "; ".join(parts) + ". " + judged[0].upper() + judged[1:] + ".",
                   measured=f"{main['label']}: {main['decode_x']:.2f}x decode, {main['ppl_change']:+.1%} perplexity",
                   **_source(record))



# ---------------------------------------------------------------- notebook 04 (parallelism): C3, C8, C14


# ---------------------------------------------------------------- notebook 06 (kernels and memory): C10, C11, C15
