"""Bring your own model: a learner's local Hugging Face folder of any family the engine runs goes through the
course's path (load -> quantize -> engine -> HTTP server) with the same tokens as `generate` at every stage.

Each test writes a tiny random checkpoint of one family to a temporary folder the way a downloaded model looks
(config.json, model.safetensors, a tokenizer with a chat template, made offline by training a word-level
tokenizer on a few lines), so nothing is downloaded."""

import httpx
import pytest
import torch

from labkit.core import models
from labkit.core.tiny_models import FAMILIES, tiny_model
from labkit.serve import SamplingParams
from labkit.serve.api import create_app, start_in_thread
from labkit.serve.engine import EngineConfig, LLMEngine
from labkit.techniques.quant import QuantSkipped, quantize

VOCAB = 256
LINES = ["def add(a, b): return a + b", "for i in range(10): print(i)", "import os, sys, json",
         "class Point: x = 0; y = 0", "while True: break", "if x is None: raise ValueError(x)"]
CHAT = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
        "{% if add_generation_prompt %}<s> assistant :{% endif %}")
METHOD = "int8-weight-only"  # batch-invariant on CPU (quant.BATCH_INVARIANT): the engine's batches keep tokens


def _tokenizer():
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers import models as tm
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(tm.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(LINES, trainers.WordLevelTrainer(vocab_size=VOCAB,
                                                             special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", chat_template=CHAT)


def _checkpoint(kind, folder):
    model = tiny_model(kind, seed=1, vocab_size=VOCAB)
    model.save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    return model


def _generate(model, prompt, n):
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def _complete(url, prompt, n):
    body = {"model": "byo", "prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


@pytest.mark.parametrize("kind", FAMILIES)
def test_local_folder_loads_quantizes_runs_and_serves_token_exact(kind, tmp_path):
    original = _checkpoint(kind, tmp_path)
    model = models.load(str(tmp_path))  # safetensors only, no remote code
    assert model.config.model_type == kind
    for (name, a), b in zip(original.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    tok = models.load_tokenizer(str(tmp_path))
    try:
        q = quantize(model, METHOD)
    except QuantSkipped as e:
        pytest.skip(f"{METHOD} cannot run here: {e}")
    assert q.labkit_quant.method == METHOD
    prompts = [tok(line)["input_ids"] * 4 for line in LINES[:4]]  # 20 to 48 tokens: past the sliding windows
    n = 12
    refs = [_generate(q, p, n) for p in prompts]
    eng = LLMEngine(q, EngineConfig(max_num_seqs=4, block_size=8, num_blocks=64, max_model_len=256,
                                    enable_chunked_prefill=True, max_num_batched_tokens=32))
    outs = eng.generate(prompts, SamplingParams(max_tokens=n, ignore_eos=True))
    same = sum(a == b for a, b in zip(outs, refs, strict=True))
    assert same == len(prompts), f"{kind}: {same}/{len(prompts)} engine requests identical to generate"

    server = start_in_thread(create_app(LLMEngine(q, EngineConfig(max_num_seqs=4, block_size=8, num_blocks=64,
                                                                  max_model_len=256)), "byo", tok))
    try:
        served = [_complete(server.url, p, n)["token_ids"] for p in prompts]
        assert served == refs
        text = _complete(server.url, LINES[0], 4)  # a string prompt, through the folder's tokenizer
        assert text["token_ids"] == _generate(q, tok(LINES[0])["input_ids"], 4)
        assert text["text"] == tok.decode(text["token_ids"])
        chat = httpx.post(f"{server.url}/v1/chat/completions", timeout=30, json={
            "model": "byo", "messages": [{"role": "user", "content": LINES[1]}], "max_tokens": 4,
            "temperature": 0, "ignore_eos": True})
        assert chat.status_code == 200, chat.text
        want = tok.apply_chat_template([{"role": "user", "content": LINES[1]}], add_generation_prompt=True,
                                       tokenize=True, return_dict=True)["input_ids"]
        assert chat.json()["usage"]["prompt_tokens"] == len(want)  # the folder's chat template was applied
    finally:
        server.stop()


@pytest.mark.parametrize("kind", FAMILIES)
def test_a_folder_is_a_speed_model_its_first_layers_with_their_weights(kind, tmp_path):
    """Notebooks 02 and 07 take `-p model=/path`: the folder's dimensions become its ShapeSpec (experts, head_dim
    and q/k norms included, so the floors are the model's own), and `build` loads its first `layers` layers with
    the folder's real weights."""
    from labkit.lessons import casestudy, quantization

    original = _checkpoint(kind, tmp_path)
    cfg = original.config
    spec = models.shape(str(tmp_path))
    assert (spec.model_type, spec.hidden_size, spec.num_hidden_layers) == (kind, cfg.hidden_size,
                                                                             cfg.num_hidden_layers)
    assert spec.head_dim == (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    n_params = sum(p.numel() for n, p in original.named_parameters() if "rotary" not in n)
    assert spec.params() == n_params  # every parameter of the family counted, experts and norms included
    if kind in ("qwen3_moe", "mixtral"):
        assert spec.active_params() < spec.params()
    cut = models.build(str(tmp_path), layers=1)
    assert cut.config.num_hidden_layers == 1 and cut.labkit_shape == spec
    kept = dict(original.state_dict())
    for name, t in cut.state_dict().items():
        assert torch.equal(t, kept[name]), name  # layer 0, embeddings and head: the folder's own weights
    assert quantization.settings("ci", model=str(tmp_path), device="cpu", seed=0, bits=4, group_size=128,
                                 methods=None, compiled=None, layers=None).layers == 1
    assert casestudy.settings("ci", model=str(tmp_path), device="cpu").layers == 1


def test_a_speed_model_that_is_neither_a_shape_nor_a_folder_is_refused_with_the_choices(tmp_path):
    with pytest.raises(models.ModelError, match="did you mean 'llama-2-7b'"):
        models.check_speed_model("llama2-7b")
    (tmp_path / "weights").mkdir()
    with pytest.raises(models.ModelError, match="no config.json"):
        models.check_speed_model(str(tmp_path / "weights"))
