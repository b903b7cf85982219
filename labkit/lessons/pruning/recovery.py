"""The recovery fine-tune of notebook 03: a short AdamW run on the training side of the corpus
(`training_ids`, `recover`, with labkit.core.train_tiny's recipe) that wins back some of what a structured cut
cost, and `heldout_sample`, the short spread-out held-out text the ci preset evaluates on.
"""

from __future__ import annotations

import torch
from torch import nn


def training_ids(tokenizer, chars: int, seed: int = 0) -> torch.Tensor:
    """Token ids of about `chars` characters of the training side of the corpus (the stdlib files not held
    out), from files drawn at random (seeded) across all of it: the first files in path order are all
    asyncio/ and a fine-tune on them alone would shift the model toward one package."""
    from labkit.core.corpus import join_documents, stdlib_files

    docs = stdlib_files("train")
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    text = join_documents([docs[i] for i in order], chars)
    return torch.tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long)


def heldout_sample(text: str, pieces: int = 8, chars: int = 1600) -> str:
    """`pieces` slices of `chars` characters spread evenly through `text` (each starting at a line), for a
    short evaluation in which many held-out files count: the first 4096 tokens of the held-out text are just
    its first two files, one of them mostly docstring prose."""
    step = max(1, (len(text) - chars) // max(1, pieces - 1))
    out = []
    for i in range(pieces):
        start = text.find("\n", i * step) + 1
        out.append(text[start:start + chars])
    return "\n".join(out)


def recover(model: nn.Module, ids: torch.Tensor, *, steps: int, batch_size: int = 8, seq_len: int = 256,
            lr: float | None = None, seed: int = 0, progress: bool = True,
            desc: str = "recovery fine-tune") -> list[float]:
    """Fine-tune `model` in place for `steps` AdamW steps on windows of `ids` with the embedded model's recipe
    (labkit.core.train_tiny.train_steps: warm-up, cosine schedule, bf16 autocast where the CPU has it). The peak
    learning rate defaults to the one its training ended with (recipe lr x min_lr_frac): a trained model
    pushed at its starting rate loses more than a mild cut cost. Returns the loss of every step."""
    from labkit.core.train_tiny import TinyRecipe, train_steps

    base = TinyRecipe()
    r = TinyRecipe(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr or base.lr * base.min_lr_frac,
                   warmup_steps=max(1, steps // 10), seed=seed)
    return train_steps(model, ids, r, progress=progress, desc=desc)
