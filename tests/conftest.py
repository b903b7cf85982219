import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*Enum subclass.*")


@pytest.fixture
def reports(tmp_path, monkeypatch):
    """A private reports/ folder so tests never touch the learner's."""
    d = tmp_path / "reports"
    monkeypatch.setenv("LABKIT_REPORTS", str(d))
    return d


@pytest.fixture(scope="session")
def tiny_llama():
    """A 2-layer random Llama small enough for fast tests (GQA like the embedded model)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def one_thread():
    """For test files of tiny tensors: with two threads on two shared cores, OpenMP's waiting makes each small op
    many times slower whenever another process is busy. One thread keeps such a file fast; restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
