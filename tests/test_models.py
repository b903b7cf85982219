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


# The current families: config.json dimensions (Hugging Face pages of meta-llama/Llama-3.1-8B, Qwen/Qwen3-8B,
# Qwen/Qwen3-30B-A3B, mistralai/Mistral-7B-v0.1, mistralai/Mixtral-8x7B-v0.1, google/gemma-3-12b-pt's
# text_config, HuggingFaceTB/SmolLM3-3B, openai/gpt-oss-20b) and the parameter counts their model cards state,
# rounded as they state them (total, active).
PUBLISHED_NEW = {
    # name: (hidden, layers, heads, kv heads, head_dim, vocab, total, active)
    "llama-3.1-8b": (4096, 32, 32, 8, 128, 128256, 8.03e9, 8.03e9),
    "qwen3-8b": (4096, 36, 32, 8, 128, 151936, 8.2e9, 8.2e9),
    "qwen3-30b-a3b": (2048, 48, 32, 4, 128, 151936, 30.5e9, 3.3e9),
    "mistral-7b": (4096, 32, 32, 8, 128, 32000, 7.24e9, 7.24e9),
    "mixtral-8x7b": (4096, 32, 32, 8, 128, 32000, 46.7e9, 12.9e9),
    "gemma-3-12b": (3840, 48, 16, 8, 256, 262208, 11.77e9, 11.77e9),  # text model; the card's 12B adds vision
    "smollm3-3b": (2048, 36, 16, 4, 128, 128256, 3.08e9, 3.08e9),  # HuggingFaceTB/SmolLM3-3B: 3.08B
    # openai/gpt-oss-20b: 20.9B in all; its card's 3.6B active leaves out the input embedding table (201088 x 2880
    # = 0.58B, looked up, not multiplied), which active_params() counts: 3.61B + 0.58B
    "gpt-oss-20b": (2880, 24, 64, 8, 64, 201088, 20.91e9, 3.61e9 + 201088 * 2880),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_NEW))
def test_current_family_shapes_count_total_and_active_parameters(name):
    s = models.shape(name)
    hidden, layers, heads, kv, head_dim, vocab, total, active = PUBLISHED_NEW[name]
    assert (s.hidden_size, s.num_hidden_layers, s.num_attention_heads, s.num_key_value_heads, s.head_dim,
            s.vocab_size) == (hidden, layers, heads, kv, head_dim, vocab)
    assert s.params() == pytest.approx(total, rel=0.01)
    assert s.active_params() == pytest.approx(active, rel=0.02)
    assert (s.active_params() < s.params()) == bool(s.num_experts)


@pytest.mark.parametrize("name", sorted(PUBLISHED_NEW))
def test_current_family_shapes_build_their_family(name):
    """A one-layer build is that family in transformers, with exactly the layer the ShapeSpec counts (experts,
    router, q/k norms, Gemma's four norms included). Narrowed vocabulary and MLPs (the published ones take
    gigabytes); the attention dimensions and the experts' count are the published ones."""
    import dataclasses

    from transformers import AutoModelForCausalLM

    s = dataclasses.replace(models.shape(name), vocab_size=512, intermediate_size=64,
                            moe_intermediate_size=64 if models.shape(name).num_experts else 0)
    m = AutoModelForCausalLM.from_config(models.config_for(s, 1))
    assert m.config.model_type == s.model_type
    assert sum(p.numel() for p in m.model.layers[0].parameters()) == s.layer_params()
    assert sum(p.numel() for p in m.parameters()) == s.params(layers=1)
    if name == "llama-3.1-8b":
        assert m.model.rotary_emb.rope_type == "llama3"
    if s.sliding_window:
        assert m.config.sliding_window == s.sliding_window


def test_moe_decode_floor_reads_the_active_experts():
    """A MoE model's batch-1 decode reads the top-k experts of each layer, not all of them: its weight bytes are
    those of its active parameters; a larger batch reads more experts, up to all (the roofline's stated
    assumption: different tokens' experts are distinct); a dense model reads all its weights at any batch."""
    from labkit.core import roofline

    moe, dense = models.shape("qwen3-30b-a3b"), models.shape("qwen3-8b")
    emb_only = moe.embedding_params() - moe.vocab_size * moe.hidden_size  # the untied input table is not read
    assert roofline.decode_weight_bytes(moe, "bf16") == 2 * (moe.active_params() - emb_only)
    assert roofline.weight_bytes(moe, "bf16") == 2 * moe.params()
    assert moe.experts_read(1) == 8 and moe.experts_read(4) == 32 and moe.experts_read(1000) == 128
    batch = [roofline.decode_weight_bytes(moe, "bf16", tokens=b) for b in (1, 4, 16, 64)]
    assert batch == sorted(batch) and batch[0] < batch[1]
    assert batch[-1] == roofline.decode_weight_bytes(moe, "bf16", tokens=10_000)  # 64 x 8 > 128: all experts
    assert roofline.decode_weight_bytes(dense, "bf16", tokens=64) == roofline.decode_weight_bytes(dense, "bf16")
    hw = roofline.card("H100-80GB")
    f_moe = roofline.decode_floor(moe, "bf16", hw, context=512)
    assert f_moe.bytes < 0.2 * roofline.weight_bytes(moe, "bf16")  # 3.3B of 30.5B parameters
    assert roofline.forward_flops(moe, 1) < roofline.forward_flops(dense, 1)  # FLOPs follow active parameters


@pytest.mark.parametrize("name", ["qwen3-30b-a3b", "mixtral-8x7b"])
def test_dense_equivalent_has_the_moe_models_total_size(name):
    moe = models.shape(name)
    dense = models.dense_equivalent(moe)
    router = moe.num_hidden_layers * moe.hidden_size * moe.num_experts
    assert dense.params() == moe.params() - router
    assert dense.active_params() == dense.params() and moe.active_params() < moe.params() / 3
    with pytest.raises(models.ModelError, match="dense already"):
        models.dense_equivalent(models.shape("qwen3-8b"))
