"""Pipeline parallelism: equal contiguous stages of decoder layers run by `torch.distributed.pipelining` (GPipe).

`StageModule` is one stage sharing the model's weights, `pipeline` builds this rank's `PipelineStage` and a
`ScheduleGPipe` over micro-batches, and `pipeline_greedy` generates greedy tokens through it (one fixed window per
step, since a schedule fixes its tensor shapes at its first step).
"""

from __future__ import annotations

import torch
from torch import nn

from labkit.techniques.parallel.checks import check_microbatches, check_stages
from labkit.techniques.parallel.processes import RankContext


class StageModule(nn.Module):
    """Decoder layers [lo, hi) of a Hugging Face Llama/Qwen2 as one pipeline stage, sharing the model's weights.
    The first stage embeds token ids; the last applies the final norm and the head to the last `keep` positions.

    It runs the whole window with causal attention and no KV cache: a pipeline schedule fixes its tensor shapes
    at its first step, so a generation keeps one window (prompt + answer so far, the rest padded) and reads the
    logits of the positions it needs; causal attention keeps the padding from reaching them."""

    def __init__(self, model: nn.Module, lo: int, hi: int, first: bool, last: bool, keep: int = 1):
        super().__init__()
        inner = model.model
        self.embed = inner.embed_tokens if first else None
        self.layers = nn.ModuleList(inner.layers[lo:hi])
        self.rotary = inner.rotary_emb
        self.norm = inner.norm if last else None
        self.head = model.lm_head if last else None
        self.keep = keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) if self.embed is not None else x
        pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        pe = self.rotary(h, pos)
        for layer in self.layers:
            h = layer(h, attention_mask=None, position_embeddings=pe, position_ids=pos)
        if self.head is not None:
            h = self.head(self.norm(h[:, -self.keep:]))
        return h


def stage_module(model: nn.Module, stage: int, stages: int, keep: int = 1) -> StageModule:
    n = model.config.num_hidden_layers
    check_stages(n, stages)
    per = n // stages
    return StageModule(model, stage * per, (stage + 1) * per, stage == 0, stage == stages - 1, keep)


def pipeline(model: nn.Module, ctx: RankContext, batch: int, seq_len: int, microbatches: int, keep: int = 1,
             module: StageModule | None = None):
    """This rank's `PipelineStage` (one stage per rank, in rank order) and a GPipe schedule over `microbatches`
    for batches of `batch` x `seq_len` token ids. The shapes are given up front (static metadata), so the
    schedule's first step runs no extra forward to discover them. Returns (stage, schedule, stage module)."""
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    check_microbatches(batch, microbatches)
    mod = module or stage_module(model, ctx.rank, ctx.world_size, keep)
    mb, dt, dev = batch // microbatches, model.dtype, ctx.device
    h, v = model.config.hidden_size, model.config.vocab_size
    first, last = ctx.rank == 0, ctx.rank == ctx.world_size - 1
    x = torch.empty(mb, seq_len, dtype=torch.long, device=dev) if first else torch.empty(mb, seq_len, h, dtype=dt,
                                                                                          device=dev)
    y = torch.empty(mb, keep, v, dtype=dt, device=dev) if last else torch.empty(mb, seq_len, h, dtype=dt, device=dev)
    stage = PipelineStage(mod, ctx.rank, ctx.world_size, dev, input_args=(x,), output_args=(y,),
                          group=ctx.mesh.get_group())
    return stage, ScheduleGPipe(stage, n_microbatches=microbatches), mod


@torch.no_grad()
def pipeline_greedy(model: nn.Module, ctx: RankContext, ids: torch.Tensor, new_tokens: int,
                    microbatches: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Greedy tokens through the pipeline (every rank passes the same `ids`): one window of prompt + answer so far
    per step, the last stage's argmax broadcast to all. Returns (tokens [batch, new_tokens] on every rank, the
    first step's last-position logits on the last rank, else None)."""
    import torch.distributed as dist

    b, p = ids.shape
    t = p + new_tokens - 1
    window = torch.zeros(b, t, dtype=torch.long, device=ctx.device)
    window[:, :p] = ids
    _, sched, _ = pipeline(model, ctx, b, t, microbatches, keep=new_tokens)
    last = ctx.world_size - 1
    toks, first = [], None
    for i in range(new_tokens):
        out = sched.step(window) if ctx.rank == 0 else sched.step()
        tok = torch.empty(b, dtype=torch.long, device=ctx.device)
        if ctx.rank == last:
            tok = out[:, i].argmax(-1)
            if i == 0:
                first = out[:, 0].float().cpu()
        dist.broadcast(tok, last, group=ctx.mesh.get_group())
        toks.append(tok.cpu())
        if p + i < t:
            window[:, p + i] = tok
    return torch.stack(toks, 1), first
