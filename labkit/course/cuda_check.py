"""The device check for a session lent a CUDA GPU: the course's CUDA paths in one short run, every step timed
and its result, or its traceback, printed and written to OUT/cuda_check.json, so one failing step does not
hide the others.

    python3 -m pytest -q tests/test_cuda.py tests/serve/test_engine.py   # on the GPU machine, repository root
    python3 -m labkit.course.cuda_check --out "$OUT"          # (python -m puts the root on the import path)
    .venv/bin/python -m labkit.course.cuda_check --device cpu --small --out /tmp/check    # the same steps, tiny, here

The GPU machines lent to this project have PyTorch, transformers, pandas and matplotlib but not papermill,
torchao or bitsandbytes (they cannot download; wheels can be carried): so this runs the lessons' library
calls rather than the notebooks, and the INT8 paths whose library is missing come back as skipped rows.

Steps: the device; the engine against `generate` (fp32, SDPA and eager attention: token-exact or a near-tie);
a bf16 prefill through SDPA's flash kernel alone; notebook 05's servers on a small Poisson trace; notebook
07's stages on its ci trace (the INT8 pick for the device, then every stage's idle TTFT and throughput).
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch


def _env(device: str, small: bool) -> dict:
    out = {"torch": torch.__version__, "device": device}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        out.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return out


def _prompts(n: int, hi: int, seed: int) -> list[list[int]]:
    import random

    from labkit.core import models

    rng = random.Random(seed)
    ids = models.prompt_ids(hi, batch=n, seed=seed, tokenizer=models.load_tokenizer(models.EMBEDDED))
    return [ids[i, : rng.randint(5, hi)].tolist() for i in range(n)]


def _alone(model, prompt: list[int], n: int) -> list[int]:
    from labkit.core.bench import generate_timed

    _, out = generate_timed(model, torch.tensor([prompt], device=model.device), n)
    return out[0, len(prompt):].tolist()


def _engine_vs_generate(device: str, small: bool) -> dict:
    """The embedded model in fp32 on `device`: the engine's greedy tokens against generate's, prompt by prompt;
    where they part, the top-2 logit gap there (a near-tie under 1e-4 is rounding, anything else a bug)."""
    from labkit.core import models
    from labkit.serve import SamplingParams
    from labkit.serve.engine import LLMEngine

    m = models.load(models.EMBEDDED, dtype="fp32", device=device)
    prompts, n = _prompts(3 if small else 6, 60 if small else 120, seed=1), 8 if small else 16
    ref = [_alone(m, p, n) for p in prompts]
    out = {}
    for attention in ("sdpa", "eager"):
        eng = LLMEngine.from_model(m, max_num_seqs=4, block_size=16, num_blocks=256, max_model_len=256,
                                   max_num_batched_tokens=32, attention=attention)
        got = eng.generate(prompts, SamplingParams(max_tokens=n, ignore_eos=True))
        parted = []
        for p, g, r in zip(prompts, got, ref, strict=True):
            if g != r:
                i = next(k for k, (a, b) in enumerate(zip(g, r, strict=False)) if a != b)
                with torch.no_grad():
                    top2 = m(input_ids=torch.tensor([p + r[:i]], device=device)).logits[0, -1].topk(2).values
                parted.append({"token": i, "gap": float(top2[0] - top2[1])})
        out[attention] = {"identical": sum(g == r for g, r in zip(got, ref, strict=True)) / len(ref),
                          "parted": parted, "ok": all(d["gap"] < 1e-4 for d in parted),
                          "kv_cache_device": str(eng.runner.k_cache.device)}
    return out


def _flash_prefill(device: str, small: bool) -> dict:
    """A bf16 prefill with SDPA limited to the flash kernel: it raises if the runner's prefill call (causal,
    grouped-query) cannot take that path. The first token is compared with generate's."""
    if not device.startswith("cuda"):
        return {"skipped": "SDPA's flash kernel is CUDA's"}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from labkit.core import models
    from labkit.serve import SamplingParams
    from labkit.serve.engine import LLMEngine

    m = models.load(models.EMBEDDED, dtype="bf16", device=device)
    prompt = _prompts(1, 120, seed=2)[0]
    eng = LLMEngine.from_model(m, max_num_seqs=1, block_size=16, num_blocks=64, max_model_len=256)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        got = eng.generate([prompt], SamplingParams(max_tokens=1, ignore_eos=True))[0]
    return {"flash_prefill": "ran", "first_token_equals_generate": got == _alone(m, prompt, 1)}


def _servers(device: str, small: bool) -> dict:
    """Notebook 05's comparison on a small Poisson trace (a one-layer TinyLlama shape)."""
    from labkit.core import models
    from labkit.lessons import batching as experiment
    from labkit.serve import workload

    m = models.load("tinyllama-1.1b", dtype="fp32", device=device, layers=1, seed=0)
    trace = workload.make_trace(4 if small else 12, prompt_len=64 if small else 512,
                                output_len=(4, 8) if small else (16, 96), arrival="poisson", rate=4.0,
                                vocab_size=m.config.vocab_size, seed=0)
    rows, _, _ = experiment.compare_servers(m, trace, max_batch=8, progress=False,
                                            max_num_batched_tokens=32 if small else 96)
    keys = ("server", "status", "output_throughput", "ttft_median_ms", "itl_median_ms", "itl_p99_ms",
            "same_tokens_as_sequential", "throughput_x_vs_static", "throughput_x_vs_hf-continuous")
    return {"rows": [{k: r[k] for k in keys if k in r} for r in rows],
            "lines": experiment.versus_lines(rows, "poisson")}


def _case_study(device: str, small: bool) -> dict:
    """Notebook 07's stages on its ci trace (8 x 512 -> 32, Llama-2-13B shape, one layer; small: 4 x 64 -> 4)."""
    from labkit.core import models
    from labkit.lessons import casestudy
    from labkit.serve import workload
    from labkit.techniques import quant

    shape = "tinyllama-1.1b" if small else "llama-2-13b"
    base = models.load(shape, dtype="fp32", device=device, layers=1, seed=0, attn_implementation="eager")
    n, plen, olen = (4, 64, 4) if small else (8, 512, 32)
    trace = workload.make_trace(n, prompt_len=plen, output_len=olen, arrival="all-at-once",
                                vocab_size=base.config.vocab_size, seed=0)
    candidates, left_out = casestudy.int8_candidates("ci", device)
    kept: dict = {}
    try:
        int8, int8_rows = casestudy.pick_int8(base, torch.tensor([trace[0].prompt_ids], device=device), candidates,
                                              output_len=olen, rounds=1, progress=False, keep=kept)
    except quant.QuantSkipped as e:
        return {"int8": f"none: {e}", "left_out": left_out}
    stages, skipped = casestudy.plan(int8, ("bf16",), device)
    rows, _, _, _ = casestudy.measure(stages, base, trace, max_batch=8, idle_repeats=1, rounds=1, progress=False,
                                      cache=kept, kernels=not small)
    keys = ("stage", "ttft_idle_ms", "output_throughput", "throughput_x_base", "ttft_idle_x_base", "failed")
    return {"int8": int8, "int8_rows": int8_rows + left_out, "skipped": skipped,
            "stages": [{k: r.get(k) for k in keys} for r in rows]}


STEPS = {"device": _env, "engine vs generate": _engine_vs_generate, "flash prefill": _flash_prefill,
         "05 servers": _servers, "07 case study": _case_study}


def run(device: str = "cuda", small: bool = False, out: Path | None = None,
        only: list[str] | None = None) -> dict:
    """Every step (or `only` those), each timed; a step that raises is recorded with its traceback."""
    report = {}
    for name, step in STEPS.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            result = {"ok": True, **step(device, small)}
        except Exception as e:  # noqa: BLE001 - a failing step is the finding; the next steps still run
            result = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        report[name] = result
        print(f"== {name} ({result['seconds']} s)\n{json.dumps(result, indent=1, default=str)}", flush=True)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "cuda_check.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m labkit.course.cuda_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="tiny sizes (a dry run of the steps on a CPU)")
    ap.add_argument("--out", type=Path, default=None, help="folder for cuda_check.json")
    ap.add_argument("--only", nargs="*", choices=list(STEPS), help="run only these steps")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu --small for a dry run of the steps")
        return 2
    report = run(args.device, args.small, args.out, args.only)
    return 0 if all(r["ok"] for r in report.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
