"""Where one decode step of the engine goes, against its floors: notebook 05's step profile.

`profile_decode_step` fills the engine with prompts, waits until every one is decoding and times a few steps under
torch.profiler, part by part; `step_floors` gives the step's compute and memory floors from the machine's card.
The batch that actually ran is in the result (requests can finish before the last prompt is in), and the figure
and the sentence name it, never the batch that was asked for.
"""

from __future__ import annotations

import contextlib

from labkit.serve.engine import LLMEngine

STEP_PARTS = {"labkit::linears": "linear layers (with the MLP, norms, head)",
              "labkit::attention": "attention (KV gather + attend)", "labkit::kv_write": "KV cache writes",
              "labkit::sample": "sampling"}


def profile_decode_step(engine: LLMEngine, prompts: list[list[int]], steps: int = 4, hw=None) -> dict:
    """Where one decode step goes: the engine gets `prompts` (one per slot it should run), each allowed as many
    tokens as its context leaves so that the first ones are still decoding when the last prompt's prefill is
    done; it runs until every running request is decoding, then `steps` steps under torch.profiler. Returns
    `batch`, the sequences each profiled step ran (their mean where one finished on the way), and `asked`, the
    prompts given (at most the engine's max_num_seqs): they differ where requests finished (their context full)
    before the last prompt was in. Then milliseconds per step for each part the runner marks (linear layers,
    attention, KV writes, sampling), the rest of the time inside the step's operators, and the Python and
    scheduling overhead around them (step wall time minus all operators); with `hw` (a roofline.Card), the step's
    compute floor (FLOPs of its tokens / the matmul rate of the model's dtype) and memory floor (weights and KV
    cache read once / bandwidth)."""
    import time

    from torch.profiler import ProfilerActivity, profile

    from labkit.serve.sequence import SamplingParams

    room = engine.config.max_model_len
    ids = [engine.add_request(p, SamplingParams(max_tokens=max(1, room - len(p)), ignore_eos=True)) for p in prompts]
    sched = engine.scheduler
    while sched.num_waiting or any(s.num_tokens - s.num_cached_tokens > 1 for s in sched.running):
        engine.step()
    running = list(sched.running)
    if not running:
        raise RuntimeError(f"no request was still decoding once every prompt was in (max_model_len={room}): "
                           "give fewer or shorter prompts, or an engine with a longer context")
    ctx = sum(s.num_tokens for s in running) / len(running)
    with _no_native_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            engine.step()
        wall = (time.perf_counter() - t0) / steps
    seqs = [st.num_seqs for st in engine.stats[-steps:]]
    batch = seqs[0] if min(seqs) == max(seqs) else sum(seqs) / len(seqs)
    for i in ids:
        engine.cancel(i)
    events = prof.key_averages()
    part_ms = {label: sum(e.cpu_time_total for e in events if e.key == key) / 1e3 / steps
               for key, label in STEP_PARTS.items()}
    ops_ms = sum(e.self_cpu_time_total for e in events if not e.key.startswith("labkit::")) / 1e3 / steps
    out = {"batch": batch, "asked": min(len(prompts), engine.config.max_num_seqs), "context": ctx,
           "step_ms": wall * 1e3, **part_ms, "other operators": max(0.0, ops_ms - sum(part_ms.values())),
           "python and scheduling": max(0.0, wall * 1e3 - ops_ms)}
    if hw is not None:
        out.update(step_floors(engine.model, batch, ctx, hw))
    return out


@contextlib.contextmanager
def _no_native_stderr():
    """The profiler's C++ side writes "USDT: ... profiler_start/stop" straight to file descriptor 2, which a
    notebook shows as output; silence that descriptor while it starts and stops (Python's stderr is untouched)."""
    import os

    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def step_floors(model, batch: int, context: float, hw) -> dict:
    """A decode step of `batch` sequences at `context` tokens: its compute floor (2 FLOPs per weight per token and
    the attention over the context, at the matmul rate of the model's dtype) and memory floor (every weight and
    each sequence's KV cache read once; of a MoE model's experts those the batch routes to), in ms."""
    import torch

    from labkit.core.models import expert_modules, weight_bytes
    from labkit.core.roofline import decode_read_bytes, measured_parts, routed_share
    from labkit.serve.runner import ModelRunner

    cfg = model.config
    emb = model.get_input_embeddings().weight
    dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(emb.dtype, "fp32")
    kv = ModelRunner.kv_bytes_per_block(model, 1) * context * batch  # bytes of K and V per token, all layers
    weights = decode_read_bytes(measured_parts(model, tokens=batch))  # a MoE model: the experts routed to
    experts = sum(p.numel() for e in expert_modules(model) for p in e.parameters())  # each token runs its top-k
    params = sum(p.numel() for p in model.parameters()) - emb.numel() * (0 if cfg.tie_word_embeddings else 1)
    params -= experts * (1 - routed_share(cfg, 1)) if experts else 0
    flops = 2 * batch * params + 4 * batch * cfg.num_hidden_layers * cfg.hidden_size * context
    peak = hw.peak(dtype)
    return {"memory_floor_ms": (weights + kv) / (hw.bandwidth_gbps * 1e9) * 1e3,
            "compute_floor_ms": flops / peak * 1e3 if peak else None, "weight_mib": weight_bytes(model) / 2**20}


STEP_SHOWN = (*STEP_PARTS.values(), "other operators", "python and scheduling")


def plot_step_profile(prof: dict, hw_source: str):
    """One decode step (`profile_decode_step`) as a stacked bar of its parts, with the memory and compute floors as
    vertical lines; the notebook shows it as "05_step_profile"."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    left = 0.0
    for name, ms in ((k, v) for k, v in prof.items() if k in STEP_SHOWN):
        ax.barh([0], [ms], left=left, label=f"{name}: {ms:.1f} ms")
        left += ms
    for floor, style in (("memory_floor_ms", "--"), ("compute_floor_ms", ":")):
        if prof.get(floor):
            ax.axvline(prof[floor], color="k", ls=style,
                       label=f"{floor.replace('_ms', '').replace('_', ' ')}: {prof[floor]:.1f} ms")
    ax.set(yticks=[], xlabel="ms per decode step",
           title=f"One decode step of {batch_words(prof)}, context {prof['context']:.0f} tokens ({hw_source})")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
    return fig


def batch_words(prof: dict) -> str:
    """The batch the profiled steps ran, as the figure and the sentence name it: "8 sequences (the full batch
    asked)", "2 sequences (8 asked: the others had finished before the profiled steps)", or with a mean where
    sequences finished during them."""
    b, asked = prof["batch"], prof.get("asked")
    steady = float(b).is_integer()
    ran = f"{b:.0f} sequence{'' if b == 1 else 's'}" if steady else f"{b:.1f} sequences on average"
    if asked is None:
        return ran
    if b == asked:
        return f"{ran} (the full batch asked)"
    when = "before the profiled steps" if steady else "before or during the profiled steps"
    return f"{ran} ({asked} asked: the others had finished {when})"


def step_profile_sentence(prof: dict) -> str:
    """The step's batch, the step against its floor (the larger of memory and compute) and its largest part, in
    words; a step faster than its floor says the card's figure is below what this machine reached."""
    parts = {k: v for k, v in prof.items() if k in STEP_SHOWN}
    kind, floor = max(("memory", prof["memory_floor_ms"]), ("compute", prof["compute_floor_ms"] or 0),
                      key=lambda t: t[1])
    step = prof["step_ms"]
    head = f"A decode step of {batch_words(prof)} took {step:.1f} ms"
    if floor > step:
        where = (f"less than its {kind} floor of {floor:.1f} ms: the machine card's "
                 f"{'bandwidth' if kind == 'memory' else 'matmul rate'} is below what this step reached")
    else:
        where = f"against a {kind} floor of {floor:.1f} ms (the floor is {floor / step:.0%} of the step)"
    return f"{head}, {where}; the largest part is {max(parts, key=parts.get)}"
