import math

import pytest
import torch

from labkit.core import quality


class CharTok:
    """A byte-level stand-in tokenizer so these tests need no trained files."""

    pad_token_id = 0

    def __call__(self, text, return_tensors=None, verbose=True):
        ids = torch.tensor([[b % 250 + 3 for b in text.encode()]])
        return {"input_ids": ids if return_tensors else ids[0].tolist()}


TEXT = "def add(a, b):\n    return a + b\n" * 12


def test_perplexity_scores_every_token_once_and_is_deterministic(tiny_llama):
    tok = CharTok()
    n = len(TEXT.encode())
    a = quality.perplexity(tiny_llama, tok, TEXT, window=64, stride=32)
    b = quality.perplexity(tiny_llama, tok, TEXT, window=64, stride=32)
    assert a == b
    assert a["tokens"] == n - 1
    assert a["perplexity"] == pytest.approx(math.exp(a["nll"]))
    # a random 256-token model is close to uniform: perplexity near the vocabulary size
    assert 100 < a["perplexity"] < 600


def test_perplexity_with_one_window_matches_a_direct_computation(tiny_llama):
    tok = CharTok()
    text = TEXT[:60]
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = tiny_llama(input_ids=ids).logits[0, :-1]
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
    got = quality.perplexity(tiny_llama, tok, text, window=128, stride=128)
    assert got["perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-5)


def test_max_tokens_and_bad_stride(tiny_llama):
    tok = CharTok()
    assert quality.perplexity(tiny_llama, tok, TEXT, window=64, stride=32, max_tokens=50)["tokens"] == 49
    with pytest.raises(ValueError):
        quality.perplexity(tiny_llama, tok, TEXT, window=64, stride=65)


def test_greedy_agreement_of_a_model_with_itself_and_with_another(tiny_llama):
    from transformers import LlamaForCausalLM

    tok = CharTok()
    prompts = ["def f(x):", "import os\n"]
    same = quality.greedy_agreement(tiny_llama, tiny_llama, tok, prompts, max_new_tokens=8)
    assert same["token_agreement"] == 1.0 and same["exact_match"] == 1.0 and same["positions"] == 16
    torch.manual_seed(99)
    other = LlamaForCausalLM(tiny_llama.config).eval()
    diff = quality.greedy_agreement(tiny_llama, other, tok, prompts, max_new_tokens=8)
    assert diff["token_agreement"] < 0.5
