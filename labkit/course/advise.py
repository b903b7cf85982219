"""`python -m labkit advise`: the course's records of this machine turned into one recommendation.

A learner arrives with "what should I run here, and how fast will it be?". The lessons answer it in pieces: notebook
01 measures the machine (the floors), 02 times every number format at batch 1 (and its perplexity rows price
each), `python -m labkit peers` puts llama.cpp, CTranslate2 and the other CPU runtimes beside labkit's paths in the
same rounds, 05 compares batching, 07 stacks them on a 13B model. This module reads the latest of each record and
says which runtime and number format, which batching, and what TTFT / TPOT / throughput to expect for the model at
full depth: projected as the lessons project (the measured few-layer time scaled by the bytes a decode step reads
and the FLOPs a prefill does at full depth: cost linear in layers), with the roofline floor next to it. It never
guesses: a record that is missing gives no number, and the line says which notebook or command makes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from labkit.core import models, records, roofline
from labkit.course import catalog
from labkit.lessons import peers, recommend

SOURCES = (catalog.HARDWARE_PROFILE, "02_quantization", "05_continuous_batching", "07_case_study", peers.EXPERIMENT)
WHY = {catalog.HARDWARE_PROFILE: "the floors (bandwidth, matmul rates)", "02_quantization": "batch-1 speed and "
       "quality of each number format", "05_continuous_batching": "which batching serves many users",
       "07_case_study": "the whole stack projected to a 13B model", peers.EXPERIMENT: "the other CPU runtimes "
       "timed beside labkit's paths"}
SERVERS = {"engine": "continuous batching (labkit's engine: `python -m labkit serve`)",
           "static": "static batching (wait for a batch, run it to the end)",
           "hf-continuous": "transformers' continuous batching", "sequential": "no batching (one request at a time)"}


def how_to_make(name: str) -> str:
    """The command that writes record `name` on this machine."""
    if name == peers.EXPERIMENT:
        return "python -m labkit peers"
    les = next(les for les in catalog.LESSONS if name in les.records)
    return f"notebook {les.notebook} (python -m labkit course --only {les.id})"


def gather(root=None) -> dict[str, dict | None]:
    """The latest record of each source (None where there is none)."""
    return {name: records.latest(name, root) for name in SOURCES}


def spec_from_config(folder: Path) -> models.ShapeSpec:
    """A model folder's dimensions (its config.json) as a ShapeSpec, to project to it (models.folder_spec)."""
    return models.folder_spec(folder)


def target_spec(model: str | None, recs: dict) -> models.ShapeSpec | None:
    """The model to advise for: `model` (a shape name or a model folder), else the shape 02 (or peers) measured."""
    if model is None:
        for name, key in (("02_quantization", "model"), (peers.EXPERIMENT, "shape")):
            if recs.get(name) and recs[name]["config"].get(key) in models.SHAPES:
                return models.shape(recs[name]["config"][key])
        return None
    if model not in models.SHAPES and Path(model).expanduser().is_dir():
        return spec_from_config(Path(model))
    return models.shape(model)  # a ModelError names the shapes (and the one meant) when it is none


# ---------------------------------------------------------------- options and their projection

def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 else None


FASTEST = "fastest"  # a peer's prefill floor: the card's fastest matmul rate (which kernel it runs is unknown)


def _dtype(bits: float) -> str:
    """The roofline's number type a kernel at `bits` per weight computes its prefill in (for the FLOP floor)."""
    return "fp32" if bits >= 24 else "bf16" if bits >= 12 else "int8" if bits >= 6 else "int4"


@dataclass
class Option:
    """One measured path: where it ran (shape, layers, prompt), its batch-1 times, its bits per weight."""

    runtime: str
    fmt: str
    source: str
    spec: models.ShapeSpec
    layers: int
    prompt_len: int
    ttft_s: float
    tpot_s: float
    bits: float
    compute: str
    act_bytes: int = 2
    peak_mib: float | None = None  # the peers record's memory column (labkit.lessons.peer_memory), where measured

    @property
    def name(self) -> str:
        return f"{self.runtime} {self.fmt}"


def step_bytes(spec: models.ShapeSpec, layers: int, bits: float, context: int, act_bytes: int) -> float:
    """Bytes one decode step reads: every layer's linear weights and the head at `bits` per weight (the course's
    speed models quantize the head too, as llama.cpp does), plus the KV cache of `context` tokens."""
    h = spec.hidden_size
    weights = (layers * (spec.layer_params() - 2 * h) + spec.vocab_size * h) * bits / 8
    return weights + spec.kv_bytes_per_token(act_bytes, layers) * context


def options_02(rec: dict) -> list[Option]:
    """02's timed rows as options (labkit's own paths through PyTorch)."""
    c = rec["config"]
    out = []
    for r in rec["metrics"].get("speed", []):
        ttft, tpot, bpw = _num(r.get("prefill_ms")), _num(r.get("decode_ms_per_token")), _num(r.get("bytes_per_weight"))
        if r.get("status") == "ok" and ttft and tpot and bpw and c.get("model") in models.SHAPES:
            act = 2 if r.get("base_dtype") in ("bf16", "fp16") else 4
            out.append(Option("labkit", r["method"], "02_quantization", models.shape(c["model"]), c["layers"],
                              c["prompt_len"], ttft / 1e3, tpot / 1e3, 8 * bpw,
                              r.get("prefill_compute") or _dtype(8 * bpw), act))
    return out


def options_peers(rec: dict) -> list[Option]:
    """The peers record's timed rows (labkit's and the other runtimes', timed in the same rounds)."""
    c = rec["config"]
    out = []
    for r in rec["metrics"].get("table", []):
        pre, dec, bits = _num(r.get("prefill tok/s")), _num(r.get("decode tok/s")), _num(r.get("bits/weight"))
        if r.get("status") == "ok" and pre and dec and bits and c.get("shape") in models.SHAPES:
            engine = r.get("engine") or r["path"].split(" ")[0]
            fmt = r["path"].removeprefix(f"{engine} ")
            compute = _dtype(bits) if engine == "labkit" else FASTEST  # a peer's kernels are not known
            out.append(Option(engine, fmt, peers.EXPERIMENT, models.shape(c["shape"]), c["layers"],
                              c["prompt_len"], c["prompt_len"] / pre, 1 / dec, bits, compute,
                              4 if bits >= 24 else 2, _num(r.get("peak MiB"))))
    return out


def project(opt: Option, spec: models.ShapeSpec, hw: roofline.Card | None) -> dict:
    """`opt` at `spec`'s full depth: TTFT scaled by prefill FLOPs, TPOT by the bytes a decode step reads (cost linear
    in both, as notebook 07 projects); with `hw` the floors beside them (bytes / bandwidth, FLOPs / matmul rate)."""
    n, p = spec.num_hidden_layers, opt.prompt_len
    read_src = step_bytes(opt.spec, opt.layers, opt.bits, p, opt.act_bytes)
    read_full = step_bytes(spec, n, opt.bits, p, opt.act_bytes)
    flops_src = roofline.forward_flops(opt.spec, p, layers=opt.layers)
    flops_full = roofline.forward_flops(spec, p)
    out = {"ttft_ms": 1e3 * opt.ttft_s * flops_full / flops_src, "tpot_ms": 1e3 * opt.tpot_s * read_full / read_src,
           "read_gib": read_full / 2**30}
    if hw is not None:
        out["tpot_floor_ms"] = 1e3 * read_full / (hw.bandwidth_gbps * 1e9)
        rates = [r for r in (hw.peak(d) for d in ("fp32", "bf16", "fp16", "int8")) if r]
        peak = (max(rates) if rates else None) if opt.compute == FASTEST else hw.peak(opt.compute)
        out["ttft_floor_ms"] = 1e3 * flops_full / peak if peak else None
    return out


# ---------------------------------------------------------------- the advice

@dataclass
class Advice:
    """What `advise` found: `lines` to print, `choice` (runtime, format, batching and the expected numbers, absent
    where not measured) and `missing` (record -> the command that makes it)."""

    lines: list[str] = field(default_factory=list)
    choice: dict = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    spec: models.ShapeSpec | None = None  # the model the numbers are projected to


def _floor_words(p: dict, key: str) -> str:
    f = p.get(f"{key}_floor_ms")
    if f is None:
        return "floor: no profile (run notebook 01)" if f"{key}_floor_ms" not in p else "floor: no matmul rate"
    if f > 1.05 * p[f"{key}_ms"]:  # beaten: the rate it divides by is not the one this path's kernels reached
        return f"floor {f:,.1f} ms, beaten: this path computes faster than the matmul rate the floor assumes"
    return f"floor {f:,.1f} ms, {f / p[f'{key}_ms']:.0%} of it"


def _single(advice: Advice, pool: list[Option], spec, hw, ttft_ms: float | None, noise: float, quality) -> None:
    """The batch-1 pick: the lowest projected TPOT among the options that meet the TTFT target."""
    proj = {o.name: project(o, spec, hw) for o in pool}
    fits = [o for o in pool if ttft_ms is None or proj[o.name]["ttft_ms"] <= ttft_ms]
    if not fits:
        advice.lines.append(f"no measured path meets TTFT <= {ttft_ms:g} ms at full depth; the fastest prefill:")
        fits = [min(pool, key=lambda o: proj[o.name]["ttft_ms"])]
    fits.sort(key=lambda o: proj[o.name]["tpot_ms"])
    best, p = fits[0], proj[fits[0].name]
    advice.choice.update({"runtime": best.runtime, "format": best.fmt, "source": best.source,
                          "prompt_len": best.prompt_len, "ttft_ms": p["ttft_ms"], "tpot_ms": p["tpot_ms"],
                          "tokens_per_s": 1e3 / p["tpot_ms"]})
    lead = ""
    if len(fits) > 1:
        ratio, sure = recommend.margin(proj[fits[1].name]["tpot_ms"], p["tpot_ms"], noise)
        lead = (f", {ratio:.2f}x faster per token than {fits[1].name} at full depth, projected" if sure else
                f"; inconclusive against {fits[1].name} ({ratio:.2f}x at full depth, projected, inside ±{noise:.0%}): "
                "either will do")
    advice.lines += [
        f"runtime and format: {best.name} (from the {best.source} record{lead})",
        f"  expected at full depth ({spec.name}, {spec.num_hidden_layers} layers, {best.prompt_len}-token prompt, "
        f"projected from {best.layers} measured layer(s) of {best.spec.name}):",
        f"  TTFT {p['ttft_ms']:,.0f} ms ({_floor_words(p, 'ttft')}); TPOT {p['tpot_ms']:,.1f} ms = "
        f"{1e3 / p['tpot_ms']:,.1f} tok/s ({_floor_words(p, 'tpot')}); {p['read_gib']:,.2f} GiB read per token"]
    if best.peak_mib:
        advice.lines.append(f"  memory: at most {best.peak_mib:,.0f} MiB held while serving one {best.prompt_len}-"
                            f"token request, measured at {best.layers} layer(s) of {best.spec.name} (its weights grow "
                            "with the layers at full depth; not projected)")
    if best.runtime == "labkit" and quality is not None:
        advice.lines.append(f"  quality: {recommend.quality_words(best.fmt, quality)}")
    elif best.runtime == "labkit":
        advice.lines.append("  quality: not measured (no 02_quantization record)")
    else:
        advice.lines.append(f"  quality: not measured here for {best.name} (the peers are checked for the same "
                            "greedy tokens in fp32, not for the perplexity of their quantized formats)")


def _batched(advice: Advice, rec: dict | None, spec, users: int, noise: float) -> None:
    """Many users: 05's best server on its Poisson trace, its TTFT / TPOT / throughput projected to `spec`."""
    if rec is None:
        advice.lines.append(f"batching for {users} users: no record; run {how_to_make('05_continuous_batching')}")
        return
    c = rec["config"]
    ok = [r for r in rec["metrics"].get("poisson", []) if r.get("status") == "ok" and _num(r.get("output_throughput"))]
    if not ok:
        advice.lines.append("batching: 05's record has no served trace (every server skipped)")
        return
    ok.sort(key=lambda r: -r["output_throughput"])
    best = ok[0]
    advice.choice["batching"] = best["server"]
    words = SERVERS.get(best["server"], best["server"])
    if len(ok) > 1:
        ratio, sure = recommend.margin(best["output_throughput"], ok[1]["output_throughput"], noise)
        words += (f", {ratio:.2f}x the output throughput of {ok[1]['server']}" if sure else
                  f" (inconclusive against {ok[1]['server']}: {ratio:.2f}x, inside ±{noise:.0%})")
    advice.lines.append(f"batching for {users} users: {words} (05, {c.get('max_batch')} at once at most)")
    if c.get("model") not in models.SHAPES or spec is None:
        advice.lines.append(f"  not projected: 05 measured {c.get('model')!r}, not a shape the course can scale")
        return
    src, bits = models.shape(c["model"]), 32.0 if c.get("dtype", "fp32") == "fp32" else 16.0
    act = 4 if bits == 32 else 2
    scale = (step_bytes(spec, spec.num_hidden_layers, bits, c["prompt_len"], act)
             / step_bytes(src, c["layers"], bits, c["prompt_len"], act))
    grow = (roofline.forward_flops(spec, c["prompt_len"])
            / roofline.forward_flops(src, c["prompt_len"], layers=c["layers"]))
    thr = best["output_throughput"] / scale
    advice.choice.update({"throughput_tok_s": thr})
    ttft, tpot = _num(best.get("ttft_median_ms")), _num(best.get("tpot_median_ms"))
    parts = [f"output {thr:,.1f} tok/s"]
    if ttft:
        parts.append(f"median TTFT {ttft * grow:,.0f} ms")
    if tpot:
        parts.append(f"median TPOT {tpot * scale:,.1f} ms")
    advice.lines.append(f"  expected at full depth ({c.get('dtype', 'fp32')}, 05's trace at {c.get('rate')} req/s, "
                        f"scaled by bytes per step and prefill FLOPs): {', '.join(parts)}")
    if users > (c.get("max_batch") or users):
        advice.lines.append(f"  not measured: {users} users is more than the {c['max_batch']} 05 ran at once; "
                            "the rest queue")


def peers_batched(rec: dict | None) -> list[str]:
    """The peers run's own sentences on batched throughput (labkit.lessons.peer_verdicts.batch_lines), with where
    they were measured: at the peers' shape, not projected to full depth."""
    if not rec or not rec["config"].get("batch"):
        return []
    c = rec["config"]
    said = [x for x in rec["metrics"].get("targets", []) if x.startswith(("batch-", "batching "))]
    odd = [r["path"] for r in rec["metrics"].get("table", [])
           if str(r.get("batched") or "").startswith("ok, but")]
    if odd:
        said.append(f"batch-dependent here: {', '.join(odd)} (a request's tokens in the batch differ from its tokens "
                    "alone: its answer changes with its neighbours)")
    return [f"  the runtimes at batch {c['batch']} (peers record: {c['batch_prompt']}-token prompts, {c['layers']} "
            f"layer(s) of {c['shape']}, not projected):", *(f"    {x}" for x in said)]


def advise(model: str | None = None, users: int = 1, ttft_ms: float | None = None, root=None) -> Advice:
    """The recommendation for this machine from the latest records under `root` (default reports/results)."""
    if users < 1 or (ttft_ms is not None and not ttft_ms > 0):
        raise ValueError(f"users must be >= 1 and ttft_ms > 0, got users={users}, ttft_ms={ttft_ms}")
    recs = gather(root)
    advice = Advice()
    advice.missing = {n: how_to_make(n) for n, r in recs.items() if r is None}
    spec = target_spec(model, recs)
    advice.spec = spec
    hw = None
    if recs[catalog.HARDWARE_PROFILE] is not None:
        prof = recs[catalog.HARDWARE_PROFILE]["metrics"]
        hw = roofline.this_machine(prof, prof.get("device", "cpu"), memory_gib=0.0)
    noise = recommend.noise_floor(root)
    q = recs["02_quantization"]
    pool = options_peers(recs[peers.EXPERIMENT]) if recs[peers.EXPERIMENT] else []
    pool = pool or (options_02(q) if q else [])
    advice.lines.append(f"advice for {spec.name if spec else 'no model'} ({spec.num_hidden_layers if spec else '?'} "
                        f"layers), {users} user(s){f', TTFT <= {ttft_ms:g} ms' if ttft_ms else ''}:")
    if spec is None:
        advice.lines.append("  no model to project to: give --model, or run notebook 02 or `python -m labkit peers`")
    elif not pool:
        advice.lines.append("runtime and format: no batch-1 timings; run "
                            f"{how_to_make('02_quantization')} or {how_to_make(peers.EXPERIMENT)}")
    else:
        _single(advice, pool, spec, hw, ttft_ms, noise, q["metrics"].get("quality") if q else None)
        if pool[0].source == peers.EXPERIMENT and q and (own := options_02(q)):
            best = min(own, key=lambda o: project(o, spec, None)["tpot_ms"])
            advice.lines.append(f"  notebook 02's fastest decode ({best.name}, from 02's own rounds on its own shape, "
                                f"not the peers' rounds): TPOT {project(best, spec, None)['tpot_ms']:,.1f} ms "
                                "projected")
    if users > 1:
        _batched(advice, recs["05_continuous_batching"], spec, users, noise)
        advice.lines += peers_batched(recs[peers.EXPERIMENT])
        if line := case_study_line(recs["07_case_study"], spec):
            advice.lines.append(line)
    advice.lines += not_measured(recs, advice)
    return advice


def not_measured(recs: dict, advice: Advice) -> list[str]:
    """What this advice could not use, and why: missing records (with their commands), peers that did not run."""
    from labkit.core.hardware import cpu_model

    out = ["not measured here:"]
    here = cpu_model()
    out += [f"  {name} was measured on {r['fingerprint'].get('cpu')}, not this machine ({here}): rerun "
            f"{how_to_make(name)}" for name, r in recs.items() if r and r["fingerprint"].get("cpu") != here]
    out += [f"  {name} ({WHY[name]}): no record; run {cmd}" for name, cmd in advice.missing.items()]
    if recs[peers.EXPERIMENT]:
        skipped = {r["path"]: r["status"] for r in recs[peers.EXPERIMENT]["metrics"].get("table", [])
                   if str(r.get("status", "")).startswith("skipped")}
        out += [f"  {path}: {why[:160]}" for path, why in skipped.items()]
        if not recs[peers.EXPERIMENT]["config"].get("batch"):
            out.append("  the peers' batched throughput: this peers record times batch 1 only; rerun "
                       f"{how_to_make(peers.EXPERIMENT)} (it times batch 8 too)")
    elif recs["02_quantization"]:
        out.append("  the other CPU runtimes (llama.cpp, CTranslate2, OpenVINO, ONNX Runtime): the advice compares "
                   f"labkit's paths only; run {how_to_make(peers.EXPERIMENT)}")
    if advice.choice:
        name = advice.spec.name if advice.spec and advice.spec.name in models.SHAPES else "PATH"
        out.append("  the full-depth numbers themselves: the course times a few layers of random weights and "
                   f"projects; `python -m labkit advise --model {name} --check` runs the pick once at full depth "
                   "and prints predicted against measured (where the model fits in memory here)")
    return out


def case_study_line(rec: dict | None, spec: models.ShapeSpec | None) -> str | None:
    """07's own projection of its fastest stage, when 07 measured the model advised for."""
    if rec is None or spec is None or rec["config"].get("model") != spec.name:
        return None
    rows = [r for r in rec["metrics"].get("projected", []) if _num(r.get("output_throughput_full"))]
    if not rows:
        return None
    best = max(rows, key=lambda r: r["output_throughput_full"])
    ceiling = _num(best.get("throughput_ceiling_full"))
    return (f"  07's stack on this model, {best['stage']} (INT8 method {rec['metrics'].get('int8_method')}): "
            f"{best['output_throughput_full']:,.1f} tok/s projected on its trace"
            f"{f' (ceiling {ceiling:,.1f})' if ceiling else ''}, idle TTFT {best['ttft_idle_ms_full']:,.0f} ms")
