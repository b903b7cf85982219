"""Notebook 02's experiment: every quantization method measured for quality and for speed, side by side.

The technique lives in `labkit.techniques.quant` (`quantize`); this module holds the loops that measure it:
- `evaluate_methods`: quality on the embedded trained model (held-out perplexity, greedy-token agreement,
  bytes) for fp32, bf16 and each method;
- `benchmark_methods`: speed on a shape-faithful model, prefill (TTFT) and decode (TPOT) at batch 1, every
  method timed once per round in rotating order (`labkit.core.bench.run_rounds`), ratios per round;
- `settings`: the notebook's parameters checked, with the preset's sizes filled in.
What the notebook shows from these tables (views, the summary table, lines, figures) is in
labkit.lessons.quantization_views; labkit.course.claims judges C5, C6, C13 from the record.
A method that cannot run here is a row "skipped: <reason>", never another method's numbers.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from labkit.core import models
from labkit.core.models import saved_bytes, weight_bytes
from labkit.core.units import TORCH_DTYPES, mib
from labkit.lessons import quantization_timing as qtiming
from labkit.techniques import quant_experts
from labkit.techniques.quant import (
    FAKE_QUANT,
    QuantInfo,
    QuantSkipped,
    _linear_names,
    quantize,
    quantize_head,
    unsupported,
)

if TYPE_CHECKING:
    import pandas as pd

# Speed is measured from bf16 for the weight-only kernels that compute in 16 bits (gpt-fast's path); quality
# from fp32 wherever the method accepts it. Where a method cannot start from the preferred dtype (torchao's
# CPU int4 needs bf16, quantize_dynamic fp32: quant.unsupported says which), the other one is used.
HEAD_INT8 = "fp32, int8 head"
# Inductor options per compiled runner on a CPU. Freezing (weights become constants that inductor prepacks for
# oneDNN) helped the unquantized models and not torchao's int8 ones, measured on this course's Xeon (Llama-2-7B
# shape, 1 layer, 512-token prompt): bf16 decode 39.4 vs 46.8 ms/token and prefill 276 vs 376 ms with freezing;
# int8-dynamic decode 27.2 vs 23.0 ms and prefill 302 vs 150 ms without; int8-weight-only the same either way.
COMPILE_OPTIONS = {"fp32": {"freezing": True}, "bf16": {"freezing": True}}
SPEED_PREFERS_BF16 = ("int8-weight-only", "int8-dynamic", "int4-rtn", "bnb-nf4")
# The ci preset's budget for the whole lesson (issue 29: notebook 02 at most ~3.5 minutes on every CPU the course has
# met, no lesson over ~4); the speed rows take what the quality part left, less a share kept for the cells after the
# speed table (the record, two figures, the verdicts: ~5 s). On an AVX2-only EPYC the quality part and quantizing
# the speed rows alone took ~160 s, so at 200 s no quantized row was timed there: 240 s leaves its cheap rows
# (int8-dynamic-legacy, int4-rtn, oneDNN's) room to run. Below BUDGET_MIN_S not even the references' probes fit.
BUDGET_CI_S = 240.0
BUDGET_MIN_S = 30.0
AFTER_SPEED_SHARE = 0.05


@dataclass(frozen=True)
class Settings:
    """Notebook 02's parameters after checking, with every size its preset decides."""

    device: str  # "cpu" or "cuda..." ("auto" resolved)
    methods: list[str]  # quant.METHODS when the notebook left it None
    compiled: list[str]  # runners also timed under torch.compile
    layers: int  # decoder layers of the speed model
    prompt_len: int  # speed: prompt tokens, new tokens, timing rounds
    new_tokens: int
    repeats: int
    ppl_tokens: int | None  # quality: held-out tokens for perplexity (None: the whole text)
    n_calib: int  # GPTQ/AWQ calibration windows and their length
    calib_len: int
    n_prompts: int  # prompts for greedy-token agreement
    budget_s: float | None = None  # seconds the whole lesson may take here (None: no budget; labkit.core.budget)


def settings(preset: str, *, model: str, device: str, seed: int, bits: int, group_size: int, methods,
             compiled, layers, budget_s=None) -> Settings:
    """Check notebook 02's parameters in the order the notebook lists them (a bad one fails at once, naming the
    valid choices: labkit.core.params) and fill in what the preset decides."""
    from labkit.core.models import check_speed_model, shape
    from labkit.core.params import check, default, pick, resolve_device
    from labkit.techniques.quant import METHODS, check_methods

    device = resolve_device(device)
    check_speed_model(check("model", model, str))  # a shape name or a model folder (its first layers)
    check("seed", seed, int, min=0)
    check("bits", bits, int, choices=(2, 3, 4, 8))
    check("group_size", group_size, int, choices=(32, 64, 128, 256))
    methods = check_methods(methods)
    compiled = default("compiled", compiled, preset, ci=["int8-dynamic"],
                       full=["bf16", "int8-weight-only", "int8-dynamic", "int4-rtn"], kind=list)
    compiled = check("compiled", compiled, list, choices=("fp32", "bf16", *METHODS))
    layers = default("layers", layers, preset, ci=1, full=4, min=1, max=shape(model).num_hidden_layers)
    prompt_len, new_tokens, repeats = pick(preset, ci=(256, 8, 2), full=(512, 32, 5))
    ppl_tokens, n_calib, calib_len, n_prompts = pick(preset, ci=(2048, 4, 256, 4), full=(None, 64, 512, 16))
    budget_s = default("budget_s", budget_s, preset, ci=BUDGET_CI_S, full=None, kind=float, min=BUDGET_MIN_S)
    return Settings(device, methods, list(compiled), layers, prompt_len, new_tokens, repeats, ppl_tokens, n_calib,
                    calib_len, n_prompts, budget_s)


def speed_deadline(budget_s: float | None, started: float) -> float | None:
    """The time.perf_counter() by which the speed rounds must end for the lesson, started at `started`, to fit
    `budget_s`: the budget less AFTER_SPEED_SHARE of it for the cells after the speed table. None: no budget."""
    return None if budget_s is None else started + budget_s * (1 - AFTER_SPEED_SHARE)


def base_dtype(method: str, device: str, prefer: str = "fp32") -> str:
    """The dtype `method` starts from on `device`: `prefer`, unless quant.unsupported refuses it there."""
    if method in ("fp32", "bf16"):
        return method
    other = "bf16" if prefer == "fp32" else "fp32"
    if unsupported(method, device, TORCH_DTYPES[prefer]) and not unsupported(method, device, TORCH_DTYPES[other]):
        return other
    return prefer


def _status(fn: Callable[[], nn.Module]) -> tuple[nn.Module | None, str]:
    """Run one quantization; a method that cannot run here gives (None, 'skipped: <reason>')."""
    try:
        return fn(), "ok"
    except QuantSkipped as e:
        return None, f"skipped: {e}"


def _plain_linear(model: nn.Module) -> tuple[int, int]:
    names = _linear_names(model, ("lm_head",))
    mods = dict(model.named_modules())
    return sum(weight_bytes(mods[n]) for n in names), sum(mods[n].weight.numel() for n in names)


def _device(model: nn.Module) -> str:
    return next(model.parameters()).device.type


def evaluate_methods(model: nn.Module, tokenizer, methods: list[str], *, calib: torch.Tensor,
                     text: str, max_tokens: int = 4096, prompts: list[str] | None = None,
                     new_tokens: int = 16, bits: int = 4, group_size: int = 128, head_int8: bool = True,
                     progress: bool = True) -> pd.DataFrame:
    """Quality of each method on a trained model: held-out perplexity, its ratio to fp32, greedy-token
    agreement with fp32 (teacher-forced, see labkit.core.quality), and bytes. One row per method plus fp32 and
    bf16; a method that cannot run here has its status and no numbers. Every method keeps the output head;
    with `head_int8` one more row, "fp32, int8 head", is the fp32 model with only its head quantized
    (labkit.techniques.quant.quantize_head): what quantizing the head costs, apart from the layers."""
    import pandas as pd

    from labkit.core.progress import tqdm

    fp32 = (model if model.dtype == torch.float32 else copy.deepcopy(model).float()).eval()
    bf16 = None
    rows = []
    extra = [HEAD_INT8] if head_int8 else []
    for method in tqdm(["fp32", "bf16", *extra, *methods], desc="quality", disable=not progress):
        base = base_dtype(method, _device(fp32))
        if base == "bf16" and bf16 is None:
            bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
        src = bf16 if base == "bf16" else fp32
        if method in ("fp32", "bf16"):
            q, status = src, "ok"
            q.labkit_quant = QuantInfo(method, 0.0, weight_bytes(q), *_plain_linear(q), config={})
        elif method == HEAD_INT8:
            q, status = _status(lambda: quantize_head(fp32))
        else:
            q, status = _status(lambda: quantize(src, method, bits=bits, group_size=group_size, calib=calib))
        row = {"method": method, "base_dtype": base, "status": status}
        if q is not None:
            row.update(_quality_row(q, fp32, tokenizer, text, max_tokens, prompts, new_tokens))
            row["ppl_vs_fp32"] = row["perplexity"] / rows[0]["perplexity"] if rows else 1.0
        rows.append(row)
        del q
    return pd.DataFrame(rows)


def _quality_row(q: nn.Module, fp32: nn.Module, tokenizer, text: str, max_tokens: int | None,
                 prompts: list[str] | None, new_tokens: int) -> dict:
    from labkit.core.quality import greedy_agreement, perplexity

    info = q.labkit_quant
    row = {"perplexity": perplexity(q, tokenizer, text, max_tokens=max_tokens)["perplexity"],
           "bits_per_weight": info.bits_per_weight, "bytes_per_weight": info.bits_per_weight / 8,
           "bytes": info.bytes, "disk_bytes": saved_bytes(q), "quant_seconds": info.seconds,
           "fake_quant": info.fake}
    if prompts:
        row["token_agreement"] = greedy_agreement(fp32, q, tokenizer, prompts, new_tokens)["token_agreement"]
    return row


# bytes left free beside the copies (activations, KV caches, compiled graphs, the kernel): a margin chosen, not
# measured; the speed models it guards are 1-7 GiB a copy, their activations at ci sizes a few MiB
MEMORY_SPARE = 2 * 2**30


def _no_room(base: nn.Module, name: str, held: int) -> str | None:
    """Why another copy of `base` (named `name`) should not be made here: the rounds hold every row's model at
    once, and a quantized copy starts as a full copy of its base. None when it fits with MEMORY_SPARE to spare."""
    from labkit.core.hardware import memory_bytes

    need, free = weight_bytes(base), memory_bytes()["available"]
    if free - need >= MEMORY_SPARE:
        return None
    return (f"not run here: quantizing it starts from a copy of the {name} speed model ({need / 2**30:.1f} GiB), and "
            f"{free / 2**30:.1f} GiB of memory is free beside the {held} copies the rounds already hold (at least "
            f"{MEMORY_SPARE / 2**30:.0f} GiB must stay free); run fewer methods (-p methods=[...]) or fewer layers")


def _speed_runners(fp32: nn.Module, methods: list[str], progress: bool,
                   not_run: dict[str, str] | None = None) -> tuple[dict, dict]:
    """fp32, bf16 and each method's quantized copy of the speed model (every linear, head included: with few
    layers the head would otherwise be a far larger share of the bytes than in the full model); a method in
    `not_run` is not quantized, its row's status the reason given there, and neither is one whose copy would not
    fit the memory left (`_no_room`)."""
    from labkit.core.progress import tqdm

    full = _no_room(fp32, "fp32", 1)
    if full:
        raise MemoryError(f"the bf16 copy every comparison needs would not fit: {full.removeprefix('not run here: ')}")
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    runners: dict[str, nn.Module] = {"fp32": fp32, "bf16": bf16}
    rows = {m: {"method": m, "base_dtype": m, "status": "ok", "bytes": weight_bytes(r),
                "bytes_per_weight": 4.0 if m == "fp32" else 2.0} for m, r in runners.items()}
    dev = _device(fp32)
    for method in tqdm(methods, desc="quantize", disable=not progress):
        base = base_dtype(method, dev, "bf16" if method in SPEED_PREFERS_BF16 else "fp32")
        row = {"method": method, "base_dtype": base}
        if method in (not_run or {}):
            row["status"] = not_run[method]
        elif method in FAKE_QUANT:
            row["status"] = "not timed: fake-quantized (dequantized fp weights); see int4-rtn for a packed kernel"
        elif experts := quant_experts.unsupported(fp32, method):
            row["status"] = f"skipped: {experts}"
        elif room := _no_room(bf16 if base == "bf16" else fp32, base, len(runners)):
            row["status"] = room
        else:
            q, row["status"] = _status(lambda: quantize(bf16 if base == "bf16" else fp32, method, skip=()))
            if q is not None:
                runners[method] = q
                row.update({"bytes": q.labkit_quant.bytes, "bytes_per_weight": q.labkit_quant.bits_per_weight / 8,
                            "quant_seconds": q.labkit_quant.seconds})
        rows[method] = row
    return runners, rows


def benchmark_methods(model: nn.Module, methods: list[str], *, prompt_len: int = 32, new_tokens: int = 16,
                      repeats: int = 3, seed: int = 0, progress: bool = True,
                      compiled: tuple[str, ...] = (), hw=None, deadline: float | None = None,
                      budget_s: float | None = None, hw_source: str = "notebook 01's profile") -> pd.DataFrame:
    """Speed of each method on a (shape-faithful) fp32 model: prefill (time to first token) and decode
    (time per output token) at batch 1, as ratios against fp32 and bf16 measured side by side: every model
    serves one request per round, rounds rotating the order (labkit.core.bench.run_rounds), and a ratio is the
    median over rounds of the per-round ratio. Fake-quantized methods are not timed.

    `compiled` names runners ("int8-dynamic", "bf16", ...) to time a second time as "<name>+compile": greedy
    decoding over a static KV cache through torch.compile (labkit.techniques.decode.StaticDecoder), which torchao's int8
    kernels need to be fast on a CPU. Their cold start includes the compilation.

    With `hw` (a labkit.core.roofline.Card: notebook 01's profile) each row also gets its floors: decode = the bytes a
    step reads (this model's own stored weights and the KV cache) / bandwidth, prefill = FLOPs / the matmul rate
    of the number type the method computes in; and the fraction of each floor the measurement reached, through
    labkit.core.floors (a floor a row beat is re-derived from the fastest rate any row of the table reached, its
    reason stored beside the fraction: `decode_fraction_reason`, `prefill_fraction_reason`). `hw_source` says
    where the card's rates come from (planner.machine_card), for those reasons.

    With a `deadline` (a time.perf_counter() value, `speed_deadline`: the lesson's `budget_s`) each row is first
    probed with 2 tokens (its cold call; an eager row at a PROBE_PROMPT-token prompt, twice, its prefill scaled to
    the prompt: labkit.lessons.quantization_timing; an INT8 row whose kernel is far too slow here for the time left
    is not even quantized: quantization_timing.slow_kernels), and labkit.core.budget.choose decides from those costs
    what the rounds run: rows that would blow the budget are timed with fewer tokens, in one round beside fp32 and
    bf16, or not run, their status then "not run here: would take ~N s ...; run with -p budget_s=M". Each cut row
    says so in `timed`; `out.attrs["budget"]` holds the plan."""
    import pandas as pd

    from labkit.core.bench import generate_timed
    from labkit.core.models import prompt_ids
    from labkit.techniques.decode import StaticDecoder, count_compiles

    fp32 = (model if model.dtype == torch.float32 else copy.deepcopy(model).float()).eval()
    ids = prompt_ids(prompt_len, vocab_size=fp32.config.vocab_size, seed=seed).to(fp32.device)
    slow = {} if deadline is None else qtiming.slow_kernels(fp32, methods, prompt_len, repeats, deadline, budget_s,
                                                            _device(fp32))
    runners, rows = _speed_runners(fp32, methods, progress, slow)

    def timed(rt) -> dict:
        return {"ttft": rt.ttft, "tpot": rt.tpot}

    # row -> a call generating `t` tokens; and the same at a short prompt, for the budget's probe of the eager rows
    callers = {name: (lambda t, m=mod: timed(generate_timed(m, ids, t)[0])) for name, mod in runners.items()}
    short = ids[:, :min(qtiming.PROBE_PROMPT, prompt_len)]
    probes = {name: (lambda t, m=mod: timed(generate_timed(m, short, t)[0])) for name, mod in runners.items()}
    order = ["fp32", "bf16", *methods]
    scale, probed = prompt_len / short.shape[1], {}
    moe = bool(models.expert_modules(fp32))
    for name in compiled:
        key = f"{name}+compile"
        order.append(key)
        if moe:  # measured on Qwen3-30B-A3B's layer: 64 recompiles of one int8 linear before dynamo gave up
            rows[key] = {"method": key, "base_dtype": rows.get(name, {}).get("base_dtype"), "status": (
                "skipped: a mixture-of-experts model's per-expert layers see a different number of tokens at every "
                "step, so torch.compile recompiles them again and again; the eager row is this method's speed")}
            continue
        if name not in runners:
            status = rows.get(name, {}).get("status", f"skipped: {name} was not run")
            if name in slow:
                why = status.removeprefix("not run here: ")
                status = f"not run here: its eager row, which its tokens are checked against, was not run ({why})"
            rows[key] = {"method": key, "base_dtype": rows.get(name, {}).get("base_dtype"), "status": status}
            continue
        if deadline is not None:  # under a budget: set the compiled row up only if its prefills fit what is left
            probed[name] = qtiming.probe(probes[name], scale)
            too_slow = qtiming.compile_cost(name, probed[name][1], deadline, budget_s)
            if too_slow:
                rows[key] = {**rows[name], "method": key, "status": too_slow}
                continue
        opts = COMPILE_OPTIONS.get(name) if _device(fp32) == "cpu" else None
        dec = StaticDecoder(runners[name], max_len=prompt_len + new_tokens, compile=True, options=opts)
        rows[key] = {**rows[name], "method": key, "compile_options": str(opts or {})}
        base = runners["fp32"] if name in ("bf16", "fp32") else runners[rows[name].get("base_dtype") or "fp32"]
        with count_compiles() as cc:
            wrong, rows[key]["compile_first_call_s"] = _compiled_disagrees(runners[name], dec, ids, new_tokens,
                                                                           None if base is runners[name] else base)
        rows[key].update({"compile_frames": cc.stats.frames, "graph_breaks": cc.stats.graph_breaks,
                          "compile": cc.stats.words(), "workaround": dec.workaround})
        if wrong:  # a fast wrong answer is not a speed-up: the row says so and is not timed
            rows[key]["status"] = f"wrong tokens: {wrong}"
            continue
        rows[key].update({f"prefill_{k}": v for k, v in dec.choose_prefill(ids, repeats=1).items()})
        callers[key] = lambda t, d=dec: timed(d.generate(ids, t)[0])
    with torch.inference_mode(), count_compiles() as during:
        timing = qtiming.time_rows(callers, repeats, new_tokens, deadline, budget_s, progress, probes=probes,
                                   scale=scale, probed=probed)
    for name, note in (timing.choice.notes if timing.choice else {}).items():
        rows[name]["timed" if name in timing.rounds_of else "status"] = note
    for name in timing.rounds_of:
        r = timing.rounds_of[name]
        first = rows[name].get("compile_first_call_s", timing.cold[name]["s"])  # a compiled path's: compiling
        if name in timing.probed_short:
            rows[name]["cold_prompt_tokens"] = short.shape[1]  # its first call was the budget's short probe
        rows[name].update({"cold_s": first, "prefill_ms": 1e3 * r.median(name, "ttft"),
                           "decode_ms_per_token": 1e3 * r.median(name, "tpot")})
        for ref in ("fp32", "bf16"):
            rows[name][f"prefill_x_vs_{ref}"] = r.ratio(ref, name, "ttft").value
            rows[name][f"decode_x_vs_{ref}"] = r.ratio(ref, name, "tpot").value
        if name.endswith("+compile"):  # the compiled path against its own eager row, in words from the rounds
            eager = name.removesuffix("+compile")
            for phase, metric in (("prefill", "ttft"), ("decode", "tpot")):
                if timing.rounds_of.get(eager) is not r:
                    rows[name][f"{phase}_vs_eager"] = "not compared (timed in other rounds to fit the budget)"
                    continue
                ratio = r.ratio(eager, name, metric)
                rows[name][f"{phase}_x_vs_eager"] = ratio.value
                rows[name][f"{phase}_vs_eager"] = ratio.words()
    if hw is not None:
        parts = {name: _floor_parts(runners[name.removesuffix("+compile")], name, row, prompt_len, new_tokens, hw,
                                    getattr(fp32, "labkit_shape", None))
                 for name, row in rows.items() if name in timing.rounds_of}
        _fractions(rows, parts, hw, hw_source)
    out = pd.DataFrame([rows[m] for m in order])
    if models.expert_modules(fp32):  # a MoE: what the floors count, and which experts code each row runs
        spec = models.spec_of_config(fp32.config)
        out.attrs["experts"] = {"total": spec.num_experts, "routed": spec.experts_read(1),
                                "baseline": fp32.config._experts_implementation}
    out.attrs["load"] = timing.load
    out.attrs["recompiles_while_timed"] = during.stats.frames  # 0: every compiled path stayed on its graphs
    out.attrs["budget"] = timing.summary()
    if out.attrs["budget"] is not None and timing.probed_short:
        out.attrs["budget"].update(probe_prompt=short.shape[1], probed_short=list(timing.probed_short))
    return out


NEAR_TIE = {torch.float32: 1e-3, torch.bfloat16: 5e-2}  # top-2 gaps rounding may decide either way (no base)


@torch.inference_mode()
def _compiled_disagrees(model: nn.Module, dec, ids: torch.Tensor, new_tokens: int,
                        base: nn.Module | None = None) -> tuple[str | None, float]:
    """(None if the compiled decoder `dec` computes what the eager `model` does, else what differs; the seconds of
    its first call, which compiles).

    Where the greedy tokens first differ, the two paths' logits for that step are compared. The difference is
    rounding (kernels summing in another order) when the compiled token is the compiled logits' own argmax and
    the compiled logits are no further from eager's than eager's are from `base`, the model before quantization
    (the method's own error), and eager's top logit beats the compiled token's by less than twice that distance.
    Without a base, a near-tie of eager's top two logits (NEAR_TIE for its dtype) is rounding."""
    from labkit.core.bench import generate_timed

    t0 = time.perf_counter()
    got = dec.generate(ids, new_tokens)[1][0, ids.shape[1]:].tolist()
    first = time.perf_counter() - t0
    ref = generate_timed(model, ids, new_tokens)[1][0, ids.shape[1]:].tolist()
    if got == ref:
        return None, first
    i = next(k for k, (a, b) in enumerate(zip(got, ref, strict=True)) if a != b)
    prefix = torch.cat([ids, torch.tensor([ref[:i]], dtype=ids.dtype, device=ids.device)], 1) if i else ids
    eager = model(input_ids=prefix).logits[0, -1].float()
    comp = dec.last_logits[i][0].float()
    apart = float((comp - eager).abs().max())
    lead = float(eager.max() - eager[got[i]])
    if base is not None:
        own = float((eager - base(input_ids=prefix).logits[0, -1].float()).abs().max())
        why = (f"the compiled logits are {apart:.3g} from eager's at most, against the method's own error of "
               f"{own:.3g} (eager vs the unquantized model)")
        if int(comp.argmax()) == got[i] and apart <= own and lead <= 2 * apart:
            return None, first
    else:
        gap = float(eager.topk(2).values.diff().abs())
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        why = f"eager's top two logits are {gap:.3f} apart, not a near-tie"
        if int(comp.argmax()) == got[i] and gap <= NEAR_TIE.get(dtype, 5e-2):
            return None, first
    return (f"the compiled path's greedy tokens differ from eager's at token {i} ({got[i]} vs {ref[i]}): {why}; "
            f"compiled {got[:6]}..., eager {ref[:6]}..."), first


def _floor_parts(model: nn.Module, name: str, row: dict, prompt_len: int, new_tokens: int, hw, spec) -> dict:
    """What one timed row's floors are made of (see benchmark_methods): the bytes a decode step reads, the prefill's
    FLOPs and the matmul rate of the number type the path really computes in (quant.COMPUTE_DTYPE: int8 for the
    W8A8 paths, the model's dtype otherwise), and the head's share of the bytes. `spec`: the shape the speed model
    was built from (its KV cache and FLOPs follow from it); None for another model."""
    from labkit.core.roofline import decode_read_bytes, forward_flops, measured_parts
    from labkit.techniques.quant import COMPUTE_DTYPE

    layers = model.config.num_hidden_layers
    elt = model.get_input_embeddings().weight.element_size()
    kv = spec.kv_bytes_per_token(elt, layers=layers) * (prompt_len + new_tokens // 2) if spec is not None else 0
    parts = measured_parts(model, tokens=1)  # batch-1 decode: a MoE model's routed experts only
    read = decode_read_bytes(parts) + kv
    compute = COMPUTE_DTYPE.get(name.removesuffix("+compile"), row.get("base_dtype") or "fp32")
    head = parts["lm_head"] or parts["embedding"]
    out = {"read": read, "flops": forward_flops(spec, prompt_len, layers=layers) if spec is not None else None,
           "peak": hw.peak(compute), "shown": {"decode_read_mib": mib(read), "prefill_compute": compute,
                                               "head_share": head / read}}
    if spec is not None:  # the same weights at the real depth: the head's share shrinks as layers are added
        out["shown"]["head_share_full_depth"] = head / decode_read_bytes(measured_parts(
            model, layers=spec.num_hidden_layers, tokens=1))
    return out


def _fractions(rows: dict, parts: dict, hw, source: str) -> None:
    """Each timed row's decode floor (its bytes at the card's bandwidth) and prefill floor (its FLOPs at the matmul
    rate it computes in) and the fraction reached, through labkit.core.floors.of_floors over the whole table: a
    floor a row beat names the rate that was wrong and is re-derived, `<key>_reason` stored beside the fraction."""
    from labkit.core.floors import Rate, of_floors

    names = list(parts)
    for n in names:
        rows[n].update(parts[n]["shown"])
    dec = of_floors([rows[n]["decode_ms_per_token"] / 1e3 for n in names],
                    [[Rate("memory bandwidth", hw.bandwidth_gbps * 1e9, parts[n]["read"], "B/s", source)]
                     for n in names])
    for n, f in zip(names, dec, strict=True):
        rows[n].update({"decode_floor_ms": f.floor_s * 1e3, **f.fields("decode_fraction")})
    pre = [n for n in names if parts[n]["flops"] and parts[n]["peak"]]
    rates = [[Rate(f"{rows[n]['prefill_compute']} matmul", parts[n]["peak"], parts[n]["flops"], "FLOP/s", source)]
             for n in pre]
    for n, f in zip(pre, of_floors([rows[n]["prefill_ms"] / 1e3 for n in pre], rates), strict=True):
        rows[n].update({"prefill_floor_ms": f.floor_s * 1e3, **f.fields("prefill_fraction")})
