"""Batch invariance in the engine: a request's greedy answer must not depend on the requests it is served with.

labkit.techniques.quant.BATCH_INVARIANT names the quantization methods that promise this (the case study prefers
them, notebook 02 says so); this file holds each to it where it matters, in the engine. Sixteen requests with
prompts of 8 to 256 tokens of held-out text are served one at a time and in batches of 8, at a token budget of 64
(prompts split into chunks, and where a chunk ends depends on the neighbours) and of 512, on the embedded model:
every answer must be the same token for token, for fp32 and for every listed method. torch.ao's per-tensor int8
(one activation scale for the whole step) is the contrast that shows the test can fail.
"""

import copy
import random

import pytest
import torch

from labkit.core import models
from labkit.serve import SamplingParams
from labkit.serve.engine import LLMEngine
from labkit.techniques import quant

BUDGETS = (64, 512)
NEW_TOKENS = 16  # few (the test stays cheap), yet enough for int8-dynamic to part on 2 of 16 prompts


@pytest.fixture(scope="module")
def embedded():
    return models.load(models.EMBEDDED, dtype="fp32")


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(0)
    ids = models.prompt_ids(256, batch=16, seed=0, tokenizer=models.load_tokenizer(models.EMBEDDED))
    lengths = [8, 256] + [rng.randint(8, 256) for _ in range(14)]
    return [ids[i, :n].tolist() for i, n in enumerate(lengths)]


def _served(model, prompts, max_num_seqs: int, budget: int) -> list[list[int]]:
    eng = LLMEngine.from_model(model, max_num_seqs=max_num_seqs, max_num_batched_tokens=max(budget, max_num_seqs),
                               block_size=16, num_blocks=max_num_seqs * 17, max_model_len=256 + NEW_TOKENS)
    with torch.inference_mode():
        return eng.generate(prompts, SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True))


def _differing(model, prompts) -> dict[str, list[int]]:
    """For each budget, the prompts whose answer in a batch of 8 differs from their answer served alone."""
    out = {}
    for budget in BUDGETS:
        alone = _served(model, prompts, 1, budget)
        batched = _served(model, prompts, 8, budget)
        out[f"budget {budget}"] = [i for i, (a, b) in enumerate(zip(alone, batched, strict=True)) if a != b]
    return out


def _quantized(embedded, method):
    """The embedded model quantized with `method`: in fp32, except int4-rtn, whose CPU kernel wants bf16."""
    if method == "fp32":
        return embedded
    base = copy.deepcopy(embedded).to(torch.bfloat16 if method == "int4-rtn" else torch.float32)
    reason = quant.unsupported(method, "cpu", next(base.parameters()).dtype)
    if reason:
        pytest.skip(reason)
    calib = None
    if method in ("gptq", "awq"):
        calib = models.prompt_ids(128, batch=4, tokenizer=models.load_tokenizer(models.EMBEDDED), source="calibration")
    try:
        return quant.quantize(base, method, inplace=True, calib=calib)
    except quant.QuantSkipped as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("method", ["fp32", *quant.BATCH_INVARIANT])
def test_answers_do_not_depend_on_batch_neighbours(embedded, prompts, method):
    assert len(prompts) == 16 and min(map(len, prompts)) == 8 and max(map(len, prompts)) == 256
    differing = _differing(_quantized(embedded, method), prompts)
    assert differing == {f"budget {b}": [] for b in BUDGETS}, f"{method}: answers that changed in a batch"


def test_per_tensor_int8_answers_do_depend_on_the_batch(embedded, prompts):
    """The contrast that makes the test above mean something: torch.ao's per-tensor activation scale is shared
    by the whole step, so some answers change when other requests share it."""
    assert "int8-dynamic-legacy" not in quant.BATCH_INVARIANT
    differing = _differing(_quantized(embedded, "int8-dynamic-legacy"), prompts)
    assert any(differing.values())
