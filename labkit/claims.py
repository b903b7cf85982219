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


# ---------------------------------------------------------------- notebook 04 (parallelism): C3, C8, C14

SPLIT_TOLERANCE = 0.05  # C3/C8: a split "holds 1/n of the weights per rank" within 5 points of 1/n
C3_MODEL = "llama-2-13b"


def c3(tp_weight_fraction: float | None, tp: int = 2, card: str = "A100-40GB", dtype: str = "fp16",
       context: int = 4096, batch: int = 1, link: str | None = None, record: dict | None = None) -> Verdict:
    """C3 (13B needs two A100s with NVLink TP) from the planner (memory_plan, cards_needed) for 13B on `card`, and
    the fraction of the weights one TP rank was measured to hold (the planner assumes 1/tp). Reproduced if the
    planner needs two or more cards and the measured split matches; partly if it needs them but the split does
    not; not reproduced if one card holds it. `link`: a sentence on what the interconnect must do (speed)."""
    from labkit.planner import cards_needed, max_batch, memory_plan, usable_bytes
    from labkit.roofline import GiB
    from labkit.roofline import card as ref_card

    if tp_weight_fraction is None:
        return not_measured("C3")
    hw = ref_card(card)
    plan = memory_plan(C3_MODEL, dtype, context, batch)
    n = cards_needed(plan, hw)
    split_ok = abs(tp_weight_fraction - 1 / tp) <= SPLIT_TOLERANCE
    split = (f"measured here, a TP={tp} rank holds {tp_weight_fraction:.2f} of the weights "
             f"({'as' if split_ok else 'not what'} the planner assumes, 1/{tp})")
    fits = (f"13B {dtype} at {context:,} tokens x batch {batch} needs {plan.total / GiB:.1f} GiB; one {card} has "
            f"{usable_bytes(hw) / GiB:.1f} GiB usable")
    if n == 1:
        status = NOT_REPRODUCED
        more = memory_plan(C3_MODEL, "fp32", context, batch)
        ev = (f"{fits}, so one card holds it (up to batch {max_batch(C3_MODEL, dtype, context, hw)}); two are needed "
              f"for fp32 ({cards_needed(more, hw) or '>8'}x) or larger batches; {split}")
    else:
        status = REPRODUCED if split_ok else PARTLY
        ev = f"{fits}: it takes {n or 'more than 8'} cards; {split}"
    if link:
        ev += f". NVLink is about speed, not memory: {link}"
    return Verdict("C3", status, ev, measured=f"{n or '>8'}x {card} ({dtype})", **_source(record))


C8_MODELS = ("qwen2.5-32b", "llama-2-70b")
NODE = 8  # cards in one server: TP stays inside a node (its fast links), PP and DP cross nodes


def c8(split_fractions: dict[str, float] | None, models: tuple[str, ...] = C8_MODELS, dtype: str = "fp16",
       context: int = 4096, batch: int = 1, cards: list[str] | None = None, record: dict | None = None) -> Verdict:
    """C8 (above 32B, combine data, tensor and pipeline parallelism) from the planner: on which reference cards
    (datasheets) the 32B and 70B models need more than one 8-card node, i.e. PP across nodes on top of TP. DP
    never helps memory (a replica holds everything: `split_fractions` says what was measured). Reproduced if
    every card needs 3D, partly if some do, not reproduced if TP inside one node holds both everywhere."""
    from labkit.planner import cards_needed, memory_plan, supports
    from labkit.roofline import REFERENCE_CARDS
    from labkit.roofline import card as ref_card

    if not split_fractions:
        return not_measured("C8")
    hws = [ref_card(c) for c in cards] if cards else list(REFERENCE_CARDS.values())
    within, beyond, per_model = [], [], []
    for m in models:
        plan = memory_plan(m, dtype, context, batch)
        fits = []
        for hw in hws:
            if supports(hw, dtype):
                n = cards_needed(plan, hw, max_cards=NODE)
                (within if n else beyond).append((m, hw.name))
                fits.append(f"{hw.name} {n}x" if n else f"{hw.name} >{NODE}x (PP across nodes)")
        per_model.append(f"{m}: " + ", ".join(fits))
    measured = ", ".join(f"{k} {v:.2f}" for k, v in split_fractions.items())
    ev = (f"fewest cards with TP inside one {NODE}-card node ({dtype}, {context:,} tokens x batch {batch}): "
          + "; ".join(per_model) + f". DP adds throughput, never memory: measured weights per rank as a fraction "
          f"of the model: {measured}")
    status = REPRODUCED if beyond and not within else PARTLY if beyond else NOT_REPRODUCED
    return Verdict("C8", status, ev, measured=f"{len(beyond)} of {len(within) + len(beyond)} need 3D",
                   **_source(record))


def _c14_row(r: dict) -> str:
    if r["compute saved ms"] > 0:
        saved = f"saves {r['compute saved ms']:.2f} ms"
    else:  # the split compute alone is slower than one rank's whole: per-operation overhead, not arithmetic
        saved = f"saves nothing (TP compute {r['TP compute ms']:.2f} ms > one rank's {r['one rank ms']:.2f} ms)"
    return f"h={r['hidden']} {saved}, adds {r['collectives ms']:.2f} ms"


def c14(rows: list[dict] | None, record: dict | None = None) -> Verdict:
    """C14 (too fine-grained TP costs more in communication than it saves) from the granularity sweep: rows with
    "hidden", "phase", "compute saved ms", "collectives ms", "TP compute ms" and "one rank ms"
    (parallel_experiment.granularity_rows).
    Reproduced if, in some phase, TP pays at the coarsest split and the collectives outweigh the saving at the
    finest; partly if they outweigh it at every size measured (the threshold lies above them); not reproduced
    if the finest split still pays."""
    if not rows:
        return not_measured("C14")

    def costs(r: dict) -> bool:
        return r["collectives ms"] >= r["compute saved ms"]

    phases: dict[str, list[dict]] = {}
    for r in rows:
        phases.setdefault(r["phase"], []).append(r)
    crossover, always = [], []
    parts = []
    for phase, rs in phases.items():
        rs = sorted(rs, key=lambda r: -r["hidden"])
        parts.append(f"{phase}: " + ", ".join(_c14_row(r) for r in rs))
        if not costs(rs[0]) and costs(rs[-1]):
            first = next(r for r in rs if costs(r))
            crossover.append(f"{phase} from hidden {first['hidden']} down")
        elif all(costs(r) for r in rs):
            always.append(phase)
    if crossover:
        status, head = REPRODUCED, "communication outweighs the compute saved: " + "; ".join(crossover)
    elif len(always) == len(phases):
        status, head = PARTLY, "communication outweighs the saving at every size measured (the threshold lies higher)"
    else:
        status, head = NOT_REPRODUCED, "even the finest split measured saved more than its collectives cost"
    return Verdict("C14", status, f"{head}. " + ". ".join(parts), measured=head.split(":")[0], **_source(record))


# ---------------------------------------------------------------- notebook 06 (kernels and memory): C10, C11, C15
