"""Models: shape builders against published configs, the embedded model, and clear errors."""

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from labkit.core import models
from labkit.core.models import ModelError

# Published config.json values and parameter counts (Hugging Face model pages of each checkpoint).
PUBLISHED = {
    # name: (hidden, intermediate, layers, heads, kv heads, vocab, total parameters)
    "llama-2-7b": (4096, 11008, 32, 32, 32, 32000, 6_738_415_616),
    "llama-2-13b": (5120, 13824, 40, 40, 40, 32000, 13_015_864_320),
    "llama-3-8b": (4096, 14336, 32, 32, 8, 128256, 8_030_261_248),
    "tinyllama-1.1b": (2048, 5632, 22, 32, 4, 32000, 1_100_048_384),
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936, 494_032_768),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shape_specs_match_published_configs(name):
    s = models.shape(name)
    hidden, inter, layers, heads, kv, vocab, params = PUBLISHED[name]
    assert (s.hidden_size, s.intermediate_size, s.num_hidden_layers, s.num_attention_heads,
            s.num_key_value_heads, s.vocab_size) == (hidden, inter, layers, heads, kv, vocab)
    assert s.params() == params


@pytest.mark.parametrize("name", ["tinyllama-1.1b", "qwen2.5-0.5b"])
def test_build_gives_the_published_layer(name):
    m = models.build(name, layers=1)
    s = models.shape(name)
    assert sum(p.numel() for p in m.parameters()) == s.params(layers=1)
    assert m.config.num_key_value_heads == s.num_key_value_heads
    assert not m.training
    again = models.build(name, layers=1)  # seeded: same weights every time
    assert torch.equal(m.model.layers[0].mlp.up_proj.weight, again.model.layers[0].mlp.up_proj.weight)
    ids = models.prompt_ids(8, vocab_size=s.vocab_size)
    assert m(input_ids=ids).logits.shape == (1, 8, s.vocab_size)


def test_kv_bytes_per_token_formula():
    s = models.shape("llama-2-7b")
    assert s.kv_bytes_per_token(2) == 2 * 32 * 32 * 128 * 2  # 512 KiB per token in fp16
    assert models.shape("llama-3-8b").kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2


def test_unknown_shape_and_bad_layers():
    with pytest.raises(ModelError, match="choose one of"):
        models.build("llama-9-1b")
    with pytest.raises(ModelError, match="between 1 and 22"):
        models.build("tinyllama-1.1b", layers=30)


def test_a_near_miss_of_a_shape_name_names_the_shape_not_a_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="did you mean the shape 'llama-2-7b'") as e:
        models.load("llama2-7b")  # a typo: the hyphen left out
    assert "hf download" not in str(e.value)
    with pytest.raises(ModelError, match="did you mean 'llama-2-13b'"):
        models.shape("llama-2-13B")


def test_weights_without_config_is_a_clear_error(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    save_file({"w": torch.zeros(4)}, str(d / "model.safetensors"))
    with pytest.raises(ModelError, match="no config.json"):
        models.load(str(d))


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no model at"):
        models.load(str(tmp_path / "nothing-here"))


def test_offline_hub_id_names_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="Offline"):
        models.load("some-org/not-downloaded-model")


def _folder_with(tmp_path, name="m"):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return d


def test_pickle_only_folder_needs_opt_in(tmp_path):
    d = _folder_with(tmp_path)
    torch.save({"w": torch.zeros(2)}, d / "pytorch_model.bin")
    with pytest.raises(ModelError, match="allow_pickle=True"):
        models.load(str(d))


def test_truncated_and_corrupted_safetensors(tmp_path):
    d = _folder_with(tmp_path)
    f = d / "model.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(f))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelError, match="truncated"):
        models.load(str(d))
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"not json at all!" + data[24:])
    with pytest.raises(ModelError, match="corrupted"):
        models.load(str(d))
    f.write_bytes(b"\x01\x02")
    with pytest.raises(ModelError, match="truncated"):
        models.load(str(d))


def test_dtype_names():
    assert models.as_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        models.as_dtype("fp8")


def test_shape_models_have_no_tokenizer():
    with pytest.raises(ModelError, match="no tokenizer"):
        models.load_tokenizer("llama-2-7b")


# ------------------------------------------------------------------ the embedded trained model

@pytest.fixture(scope="module")
def embedded():
    return models.load(models.EMBEDDED), models.load_tokenizer(models.EMBEDDED)


def test_embedded_loads_with_plain_from_pretrained():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = models.MODELS_DIR / models.EMBEDDED
    m = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert m.config.model_type == "llama"
    assert m.config.num_key_value_heads < m.config.num_attention_heads  # GQA
    assert 10e6 <= sum(p.numel() for p in m.parameters()) <= 30e6
    assert (path / "model.safetensors").exists() and not list(path.glob("*.bin"))
    assert tok.decode(tok("def f(x):\n    return x")["input_ids"]) == "def f(x):\n    return x"


def test_embedded_continues_python_plausibly(embedded):
    m, tok = embedded
    prompt = "import os\nimport sys\n\n\ndef main(argv):\n    for name in argv:\n        if "
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    text = tok.decode(out[0, ids.shape[1]:])
    # a plausible continuation closes the `if` with a colon and goes on with an indented line
    assert re.search(r":\s*\n\s+\S", text), text


def test_embedded_perplexity_reproduces_the_card(embedded):
    from labkit.core.quality import perplexity

    m, tok = embedded
    info = json.loads((models.MODELS_DIR / models.EMBEDDED / "training_info.json").read_text())
    text = (models.DATA / "eval" / "heldout.txt").read_text(encoding="utf-8")
    ppl = perplexity(m, tok, text)
    assert ppl["tokens"] == info["heldout_tokens_scored"]
    assert abs(ppl["perplexity"] / info["heldout_perplexity"] - 1) < 0.01
    assert ppl["perplexity"] < info["unigram_perplexity"] / 5  # it learned far more than token frequencies
