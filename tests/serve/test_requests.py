"""The engine refuses what it cannot run: malformed requests, and model families whose attention differs."""

import math

import pytest
import torch

from labkit.serve import SamplingParams
from labkit.serve.engine import EngineConfig, LLMEngine, RequestError


@pytest.fixture(scope="module")
def engine(tiny_llama):
    return LLMEngine(tiny_llama, EngineConfig(max_num_seqs=4, block_size=4, num_blocks=64, max_model_len=64))


@pytest.mark.parametrize("prompt, match", [
    ([5, 256], r"token 1 is 256, outside the vocabulary \[0, 256\)"),
    ([-1, 5], r"token 0 is -1, outside"),
    ([5, 3.7], r"token 1 is 3.7 \(float\), not an int"),
    ([5, "7"], r"token 1 is '7' \(str\)"),
    ([True, 5], r"token 0 is True \(bool\)"),
    ("hello", r"must be a list of token ids, got str"),
    (torch.tensor([1.0, 2.0]), r"must be one row of integer ids"),
    (torch.ones(2, 3, dtype=torch.long), r"must be one row of integer ids"),
])
def test_malformed_prompts_are_refused_naming_the_field_and_block_nobody(engine, prompt, match):
    good = engine.add_request([5, 6, 7], SamplingParams(max_tokens=3, ignore_eos=True))
    with pytest.raises(RequestError, match=match) as e:
        engine.add_request(prompt, SamplingParams(max_tokens=3))
    assert e.value.field == "prompt_ids"
    while engine.has_unfinished():  # the bad request never entered: the good one runs to its end
        engine.step()
    assert engine.get(good).num_output_tokens == 3 and engine.get(good).finish_reason == "length"


def test_a_tensor_row_of_ids_is_accepted(engine):
    sid = engine.add_request(torch.tensor([5, 6, 7]), SamplingParams(max_tokens=2, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    assert engine.get(sid).prompt_token_ids == [5, 6, 7]


@pytest.mark.parametrize("kwargs, match", [
    ({"max_tokens": 0}, "max_tokens must be a positive int, got 0"),
    ({"max_tokens": -3}, "max_tokens must be a positive int"),
    ({"max_tokens": 2.5}, "max_tokens must be a positive int, got 2.5"),
    ({"max_tokens": "8"}, "max_tokens must be a positive int, got '8'"),
    ({"temperature": math.nan}, "temperature must be a finite number"),
    ({"temperature": math.inf}, "temperature must be a finite number"),
    ({"temperature": -0.5}, "temperature must be a finite number >= 0"),
    ({"temperature": "hot"}, "temperature must be"),
    ({"stop_token_ids": [1.5]}, "stop_token_ids must be ints"),
])
def test_bad_sampling_params_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_params_of_the_wrong_type_are_refused(engine):
    with pytest.raises(RequestError, match="params: must be a SamplingParams"):
        engine.add_request([1, 2], {"max_tokens": 3})


def test_too_long_for_the_context_is_rejected_with_the_numbers(engine):
    sid = engine.add_request(list(range(3, 63)), SamplingParams(max_tokens=10))
    seq = engine.get(sid)
    assert seq.finish_reason.startswith("rejected: prompt (60 tokens) + max_tokens (10)")
    assert not engine.has_unfinished()


def _tiny(config_cls, **extra):
    cfg = config_cls(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0, **extra)
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def _generate(model, prompt, n):
    ids = torch.tensor([prompt])
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                          min_new_tokens=n)[0, len(prompt):].tolist()


def test_qwen2_shaped_model_is_served_token_exactly():
    from transformers import Qwen2Config

    model = _tiny(Qwen2Config)  # biases on q/k/v: the runner's projections carry them
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    prompts = [[5, 9, 11, 40, 7], list(range(10, 40)), [3] * 12]
    eng = LLMEngine(model, EngineConfig(max_num_seqs=3, block_size=4, num_blocks=64, max_model_len=64))
    outs = eng.generate(prompts, SamplingParams(max_tokens=8, ignore_eos=True))
    assert outs == [_generate(model, p, 8) for p in prompts]


def test_a_family_the_runner_does_not_implement_is_refused_naming_the_supported_ones():
    """GPT-2's attention (fused c_attn, learned positions) is not what the runner computes: refused with the reason
    and the families it does run, never served with wrong tokens (tests/serve/test_families.py: the supported
    ones, token-exact)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=64)).eval()
    with pytest.raises(ValueError, match=r"runs the llama, qwen2, qwen3, .* families; this model is 'gpt2'"):
        LLMEngine(gpt2, EngineConfig(num_blocks=8, max_model_len=32))


def test_generate_checks_every_request_before_queuing_any(tiny_llama):
    """generate([good, good, bad]) is all or nothing: the error names the bad prompt, nothing was queued, and the
    engine serves the next call as if the failed one had never happened."""
    eng = LLMEngine(tiny_llama, EngineConfig(max_num_seqs=4, block_size=4, num_blocks=64, max_model_len=64))
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    with pytest.raises(RequestError, match=r"prompts\[2\]\.prompt_ids: token 1 is 999, outside") as e:
        eng.generate([[5, 6, 7], [8, 9], [5, 999]], params)
    assert e.value.field == "prompts[2].prompt_ids"
    with pytest.raises(RequestError, match=r"prompts\[1\]\.params: must be a SamplingParams"):
        eng.generate([[5, 6, 7], [8, 9]], [params, {"max_tokens": 3}])
    with pytest.raises(RequestError, match=r"params: 1 SamplingParams for 2 prompts"):
        eng.generate([[5, 6, 7], [8, 9]], [params])
    assert not eng.has_unfinished() and not eng.requests and eng.scheduler.num_waiting == 0
    assert eng.generate([[5, 6, 7]], params) == [LLMEngine(tiny_llama, eng.config).generate([[5, 6, 7]], params)[0]]
    assert list(eng.requests) == [0]  # the first id: the failed calls took none
