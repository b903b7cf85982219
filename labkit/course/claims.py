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


# ---------------------------------------------------------------- notebook 01: C1, C2, C4


def _profile(record: dict | None) -> tuple[dict, object] | None:
    """(profile card, this machine's roofline Card) from notebook 01's record."""
    if not record:
        return None
    from labkit.core.roofline import this_machine

    m = record["metrics"]
    return m, this_machine(m, m.get("device", "cpu"))


def c1(record: dict | None, context: int = 512) -> Verdict:
    """7B on one V100 at ~300 ms/token, optimized under 75 ms: needs a V100 to measure; the roofline says
    whether the figures are physically plausible."""
    from labkit.core.models import shape
    from labkit.core.planner import REFERENCE_CARDS, GiB, cards_needed, memory_plan, usable_bytes
    from labkit.core.roofline import decode_floor

    got = _profile(record)
    if got is None:
        return not_measured("C1")
    m, hw = got
    base = m["baseline"]
    v100, s7 = REFERENCE_CARDS["V100-16GB"], shape("llama-2-7b")
    fv = decode_floor(s7, "fp16", v100, context)
    here = decode_floor(s7, base["dtype"], hw, context)
    plan = memory_plan(s7, base["dtype"], context)
    fits = cards_needed(plan, hw)
    ev = (f"7B fp16 decode floor on a V100 = {fv.seconds * 1e3:.1f} ms/token ({fv.bytes / 1e9:.1f} GB at "
          f"{v100.bandwidth_gbps:,.0f} GB/s, datasheet): 300 ms is {0.3 / fv.seconds:.0f}x that floor and 75 ms "
          f"{0.075 / fv.seconds:.1f}x, so a 4x gain is physically plausible. Here the full 7B in {base['dtype']} at "
          f"the baseline's {base['decode_fraction']:.0%} of the floor would take "
          f"{here.seconds / base['decode_fraction'] * 1e3:,.0f} ms/token (floor {here.seconds * 1e3:,.0f} ms)")
    ev += "." if fits else (f", if it fitted: it needs {plan.total / GiB:.1f} GiB, {usable_bytes(hw) / GiB:.1f} GiB "
                            "is usable here.")
    return Verdict("C1", NOT_MEASURABLE, ev + " Measuring it needs a V100: run notebooks 00 and 02 with "
                   "device=cuda on one.", measured=f"floor {fv.seconds * 1e3:.1f} ms on a V100 (datasheet)",
                   **_source(record))


def c2(record: dict | None) -> Verdict:
    """Memory bandwidth decides decode speed: reproduced when this machine's decode step is memory-bound (its
    floor is bytes / bandwidth) and the baseline reaches a fair share of it."""
    from labkit.core.planner import REFERENCE_CARDS

    got = _profile(record)
    if got is None:
        return not_measured("C2")
    m, hw = got
    b = m["baseline"]
    v100, a100, a100_80 = (REFERENCE_CARDS[k] for k in ("V100-16GB", "A100-40GB", "A100-80GB"))
    ratio = a100.bandwidth_gbps / v100.bandwidth_gbps
    ev = (f"here {hw.bandwidth_gbps:,.1f} GB/s measured; the baseline's decode step is {b['decode_bound']}-bound "
          f"and reaches {b['decode_fraction']:.0%} of its bandwidth floor ({b['tpot_s'] * 1e3:,.1f} ms vs "
          f"{b['decode_floor_s'] * 1e3:,.1f} ms); prefill is {b['prefill_bound']}-bound. Datasheets: A100-40GB "
          f"{a100.bandwidth_gbps:,.0f} GB/s is {ratio:.2f}x a V100's {v100.bandwidth_gbps:,.0f} (HBM2; the HBM2e "
          f"A100-80GB has {a100_80.bandwidth_gbps:,.0f})")
    status = REPRODUCED if b["decode_bound"] == "memory" else NOT_REPRODUCED
    return Verdict("C2", status, ev, measured=f"{hw.bandwidth_gbps:,.1f} GB/s, decode {b['decode_bound']}-bound",
                   **_source(record))


MMAP_PRIVATE_MAX = 0.10  # C4: "mmap avoids copies" holds when mmap adds under 10% of the file as private memory


def c4(record: dict | None) -> Verdict:
    """mmap loading avoids copies (measured: private memory growth of each load method); NVMe against SATA needs
    both disks (not measurable here)."""
    m = (record or {}).get("metrics", {})
    loads = {r["method"]: r for r in m.get("loads", [])}
    disk = m.get("disk")
    if "mmap" not in loads or "read" not in loads or not disk:
        return not_measured("C4")
    mm, rd, mib = loads["mmap"], loads["read"], 2**20
    no_copy = mm["anon_growth_bytes"] < MMAP_PRIVATE_MAX * mm["file_bytes"] <= rd["anon_growth_bytes"]
    ev = (f"file {mm['file_bytes'] / mib:,.0f} MiB. mmap: first load {mm['first_s'] * 1e3:,.0f} ms, repeat "
          f"{mm['repeat_s'] * 1e3:,.0f} ms, private memory +{mm['anon_growth_bytes'] / mib:,.0f} MiB; read then copy: "
          f"first {rd['first_s'] * 1e3:,.0f} ms, repeat {rd['repeat_s'] * 1e3:,.0f} ms, private memory "
          f"+{rd['anon_growth_bytes'] / mib:,.0f} MiB. This disk reads {disk['cold_read_gbps']:.2f} GB/s cold; NVMe "
          "against SATA needs both disks (interface limits: SATA III ~0.6 GB/s, NVMe PCIe 3.0 x4 ~3.5 GB/s)")
    status = PARTLY if no_copy else NOT_REPRODUCED
    part = "the mmap part is reproduced, NVMe vs SATA is not measurable here" if no_copy else "mmap copied here"
    return Verdict("C4", status, f"{part}: {ev}", measured=f"mmap +{mm['anon_growth_bytes'] / mib:,.0f} MiB private",
                   **_source(record))


# ---------------------------------------------------------------- notebook 02: C5, C6, C13

INT8_SIZE_MAX = 0.27  # C5: "1/4 of fp32" (8 bits of 32, plus scales)
INT8_PPL_MAX = 1.05  # C5: "over 95% of accuracy", read as perplexity within 5% of fp32 ...
INT8_AGREEMENT_MIN = 0.95  # ... and 95% of greedy tokens the same as fp32's
INT4_NOTICEABLE = 0.01  # C13: an INT4 loss counts as a loss when perplexity rises by more than 1%
INT8_QUALITY_METHODS = ("int8-dynamic", "int8-weight-only", "int8-dynamic-legacy", "bnb-int8")


def _quality(record: dict | None) -> dict[str, dict]:
    rows = (record or {}).get("metrics", {}).get("quality", [])
    return {r["method"]: r for r in rows if r.get("status") == "ok"}


def c5(record: dict | None) -> Verdict:
    """INT8 at 1/4 of fp32 keeping >95% accuracy: size of the quantized layers, perplexity, greedy agreement."""
    q = _quality(record)
    int8 = [q[m] for m in INT8_QUALITY_METHODS if m in q]
    if "fp32" not in q or not int8:
        return not_measured("C5")
    r = int8[0]
    size = r["bits_per_weight"] / 32
    kept = r.get("token_agreement")
    small, close = size <= INT8_SIZE_MAX, r["ppl_vs_fp32"] <= INT8_PPL_MAX and (kept is None or
                                                                                 kept >= INT8_AGREEMENT_MIN)
    ev = (f"{r['method']}: quantized layers {size:.2f} of fp32 ({r['bits_per_weight']:.2f} bits each; whole model "
          f"{r['bytes'] / q['fp32']['bytes']:.2f} of fp32, embeddings kept); perplexity x{r['ppl_vs_fp32']:.4f}"
          + (f", greedy tokens agreeing {kept:.1%}" if kept is not None else ""))
    status = REPRODUCED if small and close else PARTLY if small or close else NOT_REPRODUCED
    if status == PARTLY:
        ev += "; " + ("size reproduced, accuracy not" if small else "accuracy reproduced, size not")
    return Verdict("C5", status, ev, measured=f"{size:.2f} of fp32, ppl x{r['ppl_vs_fp32']:.3f}", **_source(record))


def c6(record: dict | None) -> Verdict:
    """GPTQ and AWQ lose less than plain rounding (RTN) at the same bits and group size."""
    q = _quality(record)
    if not all(m in q for m in ("rtn", "gptq", "awq")):
        return not_measured("C6")
    gap = {m: q[m]["ppl_vs_fp32"] - 1 for m in ("rtn", "gptq", "awq")}
    better = [m for m in ("gptq", "awq") if gap[m] < gap["rtn"]]
    status = REPRODUCED if len(better) == 2 else PARTLY if better else NOT_REPRODUCED
    ev = "perplexity above fp32 at the same bits and group size: " + ", ".join(f"{m} {g:+.2%}" for m, g in gap.items())
    if status == PARTLY:
        ev += f"; only {better[0]} beats plain rounding"
    return Verdict("C6", status, ev, measured=", ".join(f"{m} {g:+.2%}" for m, g in gap.items()), **_source(record))


def c13(record: dict | None) -> Verdict:
    """INT4 can fall short where accuracy matters: measurable here is whether INT4 loses noticeably more than
    INT8 (perplexity up by more than INT4_NOTICEABLE); whether that is too much for finance or medicine needs a
    task metric, so the best status is "partly reproduced"."""
    q = _quality(record)
    int8 = [q[m] for m in INT8_QUALITY_METHODS if m in q]
    int4 = q.get("int4-rtn") or q.get("rtn")
    if not int8 or not int4:
        return not_measured("C13")
    g4, g8 = int4["ppl_vs_fp32"] - 1, int8[0]["ppl_vs_fp32"] - 1
    ev = f"{int4['method']} perplexity {g4:+.2%} vs fp32, {int8[0]['method']} {g8:+.2%}"
    if g4 > g8 and g4 > INT4_NOTICEABLE:
        return Verdict("C13", PARTLY, ev + f": INT4 loses more than INT8, beyond {INT4_NOTICEABLE:.0%}; whether that "
                       "is too much for finance or medicine needs a task metric, not perplexity",
                       measured=f"INT4 {g4:+.2%}, INT8 {g8:+.2%}", **_source(record))
    why = (f"INT4 loses more than INT8 but under {INT4_NOTICEABLE:.0%} of perplexity" if g4 > g8 else
           "INT4 loses no more than INT8 here")
    return Verdict("C13", NOT_REPRODUCED, f"{ev}: {why}", measured=f"INT4 {g4:+.2%}, INT8 {g8:+.2%}",
                   **_source(record))


# ---------------------------------------------------------------- notebook 05: C9, C16

CB_THROUGHPUT_MIN = 1.4  # C9: +40% throughput over static batching
CB_VARIANCE_MAX = 0.4  # C9: 60% less latency variance (E2E std at most 0.4x static's)


def _servers(record: dict | None, trace: str) -> dict[str, dict]:
    rows = (record or {}).get("metrics", {}).get(trace, [])
    return {r["server"]: r for r in rows if r.get("status") == "ok"}


def c9(record: dict | None) -> Verdict:
    """Continuous batching against static batching on the Poisson trace: throughput and E2E-latency spread."""
    p = _servers(record, "poisson")
    if "engine" not in p or "static" not in p:
        return not_measured("C9")
    e, s = p["engine"], p["static"]
    # the median of the per-round ratios where the servers replayed in rounds (equal to this with one round)
    thr = e.get("throughput_x_vs_static") or e["output_throughput"] / s["output_throughput"]
    var = e["e2e_std_ms"] / s["e2e_std_ms"] if s.get("e2e_std_ms") else float("nan")
    ok_thr, ok_var = thr >= CB_THROUGHPUT_MIN, var <= CB_VARIANCE_MAX
    status = REPRODUCED if ok_thr and ok_var else PARTLY if ok_thr or ok_var else NOT_REPRODUCED
    ev = (f"Poisson trace: engine {thr:.2f}x static batching's output throughput (guide: {CB_THROUGHPUT_MIN}x); "
          f"E2E latency std {var:.2f}x static's (guide: {CB_VARIANCE_MAX}x)")
    if status == PARTLY:
        ev += "; " + ("throughput reproduced, variance not" if ok_thr else "variance reproduced, throughput not")
    return Verdict("C9", status, ev, measured=f"{thr:.2f}x throughput, {var:.2f}x std", **_source(record))


def c16(record: dict | None) -> Verdict:
    """A fixed batch size cannot follow a changing load: under Poisson arrivals, static batching's p99 TTFT
    against the engine's."""
    p = _servers(record, "poisson")
    if "engine" not in p or "static" not in p:
        return not_measured("C16")
    e, s = p["engine"], p["static"]
    ev = f"Poisson trace: p99 TTFT static {s['ttft_p99_ms']:,.0f} ms vs engine {e['ttft_p99_ms']:,.0f} ms"
    a = _servers(record, "all_at_once")
    if "engine" in a and "static" in a:
        ae, st = a["engine"], a["static"]
        x = ae.get("throughput_x_vs_static") or ae["output_throughput"] / st["output_throughput"]
        ev += f"; all at once with equal lengths (static's best case): engine at {x:.2f}x static's throughput"
    status = REPRODUCED if e["ttft_p99_ms"] < s["ttft_p99_ms"] else NOT_REPRODUCED
    return Verdict("C16", status, ev, measured=f"p99 TTFT {s['ttft_p99_ms']:,.0f} -> {e['ttft_p99_ms']:,.0f} ms",
                   **_source(record))


# ---------------------------------------------------------------- notebook 07: C12

def c12(record: dict | None) -> Verdict:
    """The case study: the guide's stack measured stage by stage; reproduced when the final stage passes the
    case study's bars (labkit.lessons.casestudy.TARGET on throughput and idle TTFT, perplexity within tolerance)."""
    m = (record or {}).get("metrics")
    if not m or "throughput_ratio" not in m:
        return not_measured("C12")
    ran = [r for r in m.get("stages", [])[1:] if r.get("status", "ok") == "ok" and r.get("throughput_x_prev")]
    factors = ", ".join(f"{r['stage']} {r['throughput_x_prev']:.2f}x (guide {r.get('guide_factor') or '-'})"
                        for r in ran)
    ev = f"{m.get('message', '')}. Throughput factor per stage: {factors}"
    measured = f"{m['throughput_ratio']:.2f}x throughput, {m['ttft_idle_ratio']:.2f}x idle TTFT"
    if not m.get("asserted"):
        return Verdict("C12", NOT_MEASURABLE, ev + ". Deciding it needs hardware whose int8 or bf16 matrix units "
                       "leave the bar well within reach (see the message)", measured=measured, **_source(record))
    if not m.get("asserted_passed", m.get("passed")):
        return Verdict("C12", NOT_REPRODUCED, ev, measured=measured, **_source(record))
    both = len(m.get("asserted_ratios", ["throughput", "ttft"])) >= 2
    return Verdict("C12", REPRODUCED if both else PARTLY, ev if both else ev + ". Reproduced for "
                   f"{' and '.join(m['asserted_ratios'])}; the other ratio is not decidable on this machine",
                   measured=measured, **_source(record))


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

SPLIT_TOLERANCE = 0.05  # C3/C8: a split "holds 1/n of the weights per rank" within 5 points of 1/n
C3_MODEL = "llama-2-13b"


def c3(tp_weight_fraction: float | None, tp: int = 2, card: str = "A100-40GB", dtype: str = "fp16",
       context: int = 4096, batch: int = 1, link: str | None = None, record: dict | None = None) -> Verdict:
    """C3 (13B needs two A100s with NVLink TP) from the planner (memory_plan, cards_needed) for 13B on `card`, and
    the fraction of the weights one TP rank was measured to hold (the planner assumes 1/tp). Reproduced if the
    planner needs two or more cards and the measured split matches; partly if it needs them but the split does
    not; not reproduced if one card holds it. `link`: a sentence on what the interconnect must do (speed)."""
    from labkit.core.planner import cards_needed, max_batch, memory_plan, usable_bytes
    from labkit.core.roofline import GiB
    from labkit.core.roofline import card as ref_card

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
    from labkit.core.planner import cards_needed, memory_plan, supports
    from labkit.core.roofline import REFERENCE_CARDS
    from labkit.core.roofline import card as ref_card

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

C10_MEMORY_CUT = 0.30  # C10: AMP plus regular empty_cache() cut memory use by 30%
C10_TOLERANCE = 0.05  # a cut within 5 points of the guide's figure counts as reproducing it
C11_SPEEDUP = 3.0  # C11: FlashAttention-2 3x faster than plain attention ...
C11_MEMORY_SAVING = 0.40  # ... and 40% less memory


def c10(peaks: dict[str, float], device: str, record: dict | None = None) -> Verdict:
    """C10 from measured peak memory of the same inference (weights included), bytes: "fp32" (the baseline),
    "autocast" (AMP) and, on CUDA, "autocast+empty_cache". Reproduced if AMP with empty_cache cuts the peak by
    about 30%; partly if the cut is there but comes from AMP alone (empty_cache adding under a point), or, where
    empty_cache cannot be measured (no CUDA), if AMP alone gives it; not reproduced otherwise."""
    if not peaks.get("fp32") or not peaks.get("autocast"):
        return not_measured("C10")
    base, need = peaks["fp32"], C10_MEMORY_CUT - C10_TOLERANCE
    amp = 1 - peaks["autocast"] / base
    both = 1 - peaks["autocast+empty_cache"] / base if peaks.get("autocast+empty_cache") else None
    measured = f"autocast {-amp:+.0%}" + ("" if both is None else f", autocast + empty_cache {-both:+.0%}")
    ev = f"peak memory against fp32 on {device}: {measured}"
    if both is None:
        ev += "; empty_cache() is CUDA's (the CPU has no caching allocator to empty): not measurable here"
        status = PARTLY if amp >= need else NOT_REPRODUCED
    elif both >= need:
        status = REPRODUCED if both - amp >= 0.01 else PARTLY
        if status == PARTLY:
            ev += "; the cut is autocast's: empty_cache() lowers reserved memory, not the peak"
    else:
        status = NOT_REPRODUCED
    return Verdict("C10", status, ev, measured=measured, **_source(record))


def c11(rows: list[dict], device: str, a100_length: int | None = None, skipped: str | None = None,
        record: dict | None = None) -> Verdict:
    """C11 from the attention sweep: one row per length {"n", "kernel", "speedup" (fused over eager, median of
    rounds), "conclusive", "memory_saving" (1 - fused peak / eager peak)}; judged at the longest length measured.
    Reproduced if the fused kernel is at least 3x faster (conclusively) and saves at least 40% of the memory,
    partly if one holds. `a100_length`: the shortest length at which the roofline lets a fused kernel reach 3x on
    an A100 (the guide's card); `skipped`: why no fused kernel could run here."""
    where = f"the guide's 3x needs n >= {a100_length:,} on an A100 by the roofline" if a100_length else \
        "the roofline does not give 3x on an A100 at any length tried"
    if not rows:
        if skipped:
            return Verdict("C11", NOT_MEASURABLE, f"no fused kernel runs here ({skipped}); {where}",
                           **_source(record))
        return not_measured("C11")
    rows = sorted(rows, key=lambda r: r["n"])
    last = rows[-1]
    fast = last["speedup"] >= C11_SPEEDUP and last.get("conclusive", True)
    lean = last["memory_saving"] >= C11_MEMORY_SAVING
    status = REPRODUCED if fast and lean else PARTLY if fast or lean else NOT_REPRODUCED
    trend = ", ".join(f"n={r['n']:,}: {r['speedup']:.2f}x, {-r['memory_saving']:+.0%} memory" for r in rows)
    measured = f"{last['speedup']:.2f}x faster, {-last['memory_saving']:+.0%} memory at n={last['n']:,}"
    ev = (f"{last['kernel']} against eager attention on {device} ({trend}); this is the fused kernel this device "
          f"has, not FlashAttention-2 on an A100; {where}")
    return Verdict("C11", status, ev, measured=measured, **_source(record))


# ---------------------------------------------------------------- the ledger (notebook 08)

def kernels_verdicts(sweep, prefill, comp, precision, cuda_rows: list[dict], device: str,
                     a100_length: int | None, record: dict | None = None) -> list[Verdict]:
    """C10, C11 and C15 from notebook 06's tables (labkit.lessons.kernels.verdict_inputs reads them)."""
    from labkit.lessons import kernels as kx

    got = kx.verdict_inputs(sweep, prefill, comp, precision, cuda_rows)
    v10 = c10(got["peaks"], device, record)
    v11 = c11(got["fused_rows"], device, a100_length, got["fused_skipped"], record)
    v11.evidence += got["prefill_note"]
    return [v10, v11, c15(got["cold_over_warm"], record)]


def _kernels(record: dict | None) -> list[Verdict] | None:
    """C10, C11, C15 recomputed from notebook 06's record (its tables, as the lesson judged them)."""
    if not record or "attention" not in record.get("metrics", {}):
        return None
    import pandas as pd

    m = record["metrics"]
    return kernels_verdicts(pd.DataFrame(m["attention"]), pd.DataFrame(m["prefill"]), pd.DataFrame(m["compile"]),
                            pd.DataFrame(m["precision"]), m.get("empty_cache", []),
                            record["config"].get("device", "cpu"), m.get("a100_length_for_3x"), record)


def _c10_record(record: dict | None) -> Verdict:
    got = _kernels(record)
    return got[0] if got else not_measured("C10")


def _c11_record(record: dict | None) -> Verdict:
    got = _kernels(record)
    return got[1] if got else not_measured("C11")


def _c15_record(record: dict | None, base: dict | None = None) -> Verdict:
    """C15 from notebook 06's record (compiled paths, flex, eager), with notebook 00's eager generate added."""
    ratios = {}
    m = (base or {}).get("metrics", {})
    ratios.update({f"eager generate ({k})": m[f"cold_over_warm_{k}"] for k in ("E2E", "TTFT")
                   if m.get(f"cold_over_warm_{k}")})
    got = _kernels(record)
    if got:
        first = got[2].measured or ""
        return Verdict("C15", got[2].status, got[2].evidence + ("; notebook 00: " + ", ".join(
            f"{k} {v:.2f}x" for k, v in ratios.items()) if ratios else ""), measured=first, **_source(record))
    return c15(ratios, base) if ratios else not_measured("C15")


def _c17_record(record: dict | None) -> Verdict:
    if not record:
        return not_measured("C17")
    return c17(record["config"], repeats=int(record["metrics"].get("steady_requests", 0)),
               fingerprint_stored=bool(record.get("fingerprint")), record=record)


# claim -> (the experiments whose latest records it reads, the function that judges them, taking one record or
# None per experiment). Lessons add theirs here.
def _parallel(record: dict | None) -> tuple[dict, int] | None:
    """(measured weight fractions per split, the TP degree) from notebook 04's record."""
    if not record or "results" not in record.get("metrics", {}):
        return None
    from labkit.lessons.parallelism import split_fractions

    return split_fractions(record["metrics"]["results"]), len(record["metrics"]["results"]["memory"])


def _c7_record(record: dict | None) -> Verdict:
    """C7 from notebook 03's record: the two 40% cuts' figures as the lesson judged them."""
    got = (record or {}).get("metrics", {}).get("c7")
    return c7(got["magnitude"], got["structured"], record) if got else not_measured("C7")


def _c3_record(record: dict | None) -> Verdict:
    got = _parallel(record)
    return c3(got[0][f"TP={got[1]}"], tp=got[1], record=record) if got else not_measured("C3")


def _c8_record(record: dict | None) -> Verdict:
    got = _parallel(record)
    return c8(got[0], record=record) if got else not_measured("C8")


def _c14_record(record: dict | None) -> Verdict:
    rows = (record or {}).get("metrics", {}).get("granularity")
    return c14(rows, record=record) if rows else not_measured("C14")


SOURCES: dict[str, tuple[tuple[str, ...], object]] = {
    "C1": (("hardware_profile",), c1), "C2": (("hardware_profile",), c2), "C4": (("hardware_profile",), c4),
    "C3": (("04_parallelism",), _c3_record), "C8": (("04_parallelism",), _c8_record),
    "C14": (("04_parallelism",), _c14_record), "C7": (("03_pruning",), _c7_record),
    "C5": (("02_quantization",), c5), "C6": (("02_quantization",), c6), "C13": (("02_quantization",), c13),
    "C9": (("05_continuous_batching",), c9), "C16": (("05_continuous_batching",), c16),
    "C10": (("06_kernels_and_memory",), _c10_record), "C11": (("06_kernels_and_memory",), _c11_record),
    "C15": (("06_kernels_and_memory", "00_baseline"), _c15_record),
    "C12": (("07_case_study",), c12), "C17": (("00_baseline",), _c17_record),
}


def ledger(root=None) -> list[Verdict]:
    """Every claim's verdict from the latest records under `root` (default: reports/results): a claim whose
    lesson has not run, or has not been written, is "not measured yet", never guessed."""
    from labkit.core.records import latest

    out = []
    for cid in CLAIMS:
        if cid not in SOURCES:
            out.append(Verdict(cid, NOT_MEASURED, f"notebook {CLAIMS[cid].notebook} does not measure it yet"))
            continue
        experiments, judge = SOURCES[cid]
        recs = [latest(e, root) for e in experiments]
        out.append(judge(*recs) if any(r is not None for r in recs) else not_measured(cid))
    return out


def counts(verdicts: list[Verdict]) -> dict[str, int]:
    """How many verdicts have each status, in STATUSES order."""
    return {s: sum(v.status == s for v in verdicts) for s in STATUSES}


def what_to_trust(verdicts: list[Verdict]) -> list[str]:
    """The ledger in plain words, one line per status that occurs: which promises hold here, which do not,
    which this machine cannot test, which are still to be measured."""
    words = {REPRODUCED: "Holds on this machine", PARTLY: "Holds in part (read the evidence for which part)",
             NOT_REPRODUCED: "Does not hold here, as measured", NOT_MEASURABLE: "Cannot be tested on this hardware",
             NOT_MEASURED: "Not measured yet (run the lesson named)"}
    out = []
    for status in STATUSES:
        hit = [v for v in verdicts if v.status == status]
        if hit:
            out.append(f"{words[status]}: " + "; ".join(f"{v.claim} ({CLAIMS[v.claim].words})" for v in hit) + ".")
    return out
