"""A mixture-of-experts model's experts are 3-D tensors in transformers 5, not nn.Linear layers: labkit makes
per-expert layers of them that compute what the fused module does, every method that quantizes linear layers then
quantizes them too, the others refuse the model with the share of the weights they would leave unquantized; and a
MoE decode's floor reads only the routed experts' bytes."""

import copy
import dataclasses

import pytest
import torch

from labkit.core import models, roofline
from labkit.core.tiny_models import tiny_model
from labkit.techniques import quant_experts
from labkit.techniques.quant import QuantSkipped, fake_quant, quantize


def _greedy(model, ids, n=12):
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                         eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:]


@pytest.mark.parametrize("kind", ["qwen3_moe", "mixtral", "gpt_oss"])
def test_unfused_experts_compute_what_the_fused_module_does(kind):
    """The per-expert layers hold the fused tensors' weights (gpt-oss's transposed, with biases) and run the same
    loop: the same layer outputs and the same greedy tokens as transformers' own module, under inference mode
    too (where the engine and the timing rounds run)."""
    model = tiny_model(kind, seed=0)
    unfused = copy.deepcopy(model)
    assert quant_experts.unfuse(unfused) == model.config.num_hidden_layers
    assert not models.fused_experts(unfused) and len(models.expert_modules(unfused)) == 2
    assert quant_experts.expert_params(unfused) == quant_experts.expert_params(model) > 0
    ids = models.prompt_ids(24, vocab_size=256, seed=1)
    with torch.inference_mode():
        torch.testing.assert_close(unfused(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(_greedy(unfused, ids), _greedy(model, ids))


@pytest.mark.parametrize("kind", ["qwen3_moe", "gpt_oss"])
@pytest.mark.parametrize("method", ["int8-weight-only", "int8-dynamic-onednn"])
def test_a_linear_method_quantizes_every_expert(kind, method):
    from labkit.techniques.quant import OneDNNInt8Linear

    model = tiny_model(kind, seed=0)
    q = quantize(model, method)
    (experts, *_), = [models.expert_modules(layer) for layer in q.model.layers[:1]]
    layers = [*experts.gate_up, *experts.down]
    assert len(layers) == 2 * model.config.num_local_experts if kind == "gpt_oss" else 2 * model.config.num_experts
    if method == "int8-weight-only":
        assert all(type(lin.weight).__name__ == "Int8Tensor" for lin in layers)
    else:
        assert all(isinstance(lin, OneDNNInt8Linear) for lin in layers)
    info = q.labkit_quant
    assert info.linear_params == quant_experts.expert_params(model) + sum(
        m.weight.numel() for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
        and not name.endswith("lm_head"))
    assert 8 <= info.bits_per_weight < 9.5  # int8 codes and a scale per output channel, experts included
    assert info.bytes < 0.5 * models.weight_bytes(model)  # most of the model is experts: they shrank too
    ids = models.prompt_ids(24, vocab_size=256, seed=1)
    with torch.inference_mode():
        diff = (q(ids).logits - model(ids).logits).abs().max()
    assert 0 < diff < 1.0  # int8 rounding: close to the fp32 model, not equal to it


def test_rtn_fake_quantizes_each_expert_on_the_grid():
    model = tiny_model("qwen3_moe", seed=0)
    q = quantize(model, "rtn", bits=4, group_size=32)
    fused = models.fused_experts(model)[0]
    experts = models.expert_modules(q.model.layers[0])[0]
    for e in range(fused.gate_up_proj.shape[0]):
        assert torch.equal(experts.gate_up[e].weight, fake_quant(fused.gate_up_proj[e], 4, 32)), e
        assert torch.equal(experts.down[e].weight, fake_quant(fused.down_proj[e], 4, 32)), e


@pytest.mark.parametrize("kind,method", [("qwen3_moe", "gptq"), ("mixtral", "bnb-nf4"), ("gpt_oss", "awq")])
def test_a_method_that_would_leave_the_experts_unquantized_refuses_with_their_share(kind, method):
    model = tiny_model(kind, seed=0)
    share = quant_experts.share(model)
    assert share > 0.5
    with pytest.raises(QuantSkipped, match="calibrating each expert") as e:
        quantize(model, method, calib=models.prompt_ids(16, batch=2, vocab_size=256))
    assert f"experts ({share:.0%} of its weights)" in str(e.value) and "leave them in float32" in str(e.value)
    assert quant_experts.unsupported(tiny_model("llama"), method) is None  # a dense model has no experts


def test_a_moe_decode_step_reads_only_the_routed_experts():
    """measured_parts(tokens=k) counts the experts k tokens route to, as the roofline's ShapeSpec count does; all
    of them as the batch grows, or for the weights in memory (tokens None)."""
    spec = dataclasses.replace(models.shape("qwen3-30b-a3b"), vocab_size=256, hidden_size=256,
                               moe_intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_size=64)
    model = models.build(spec, layers=2)
    read = roofline.decode_read_bytes(roofline.measured_parts(model, tokens=1))
    assert read == pytest.approx(roofline.decode_weight_bytes(spec, "fp32", layers=2), rel=1e-9)
    assert read < 0.2 * roofline.decode_read_bytes(roofline.measured_parts(model))  # 8 of 128 experts
    every = roofline.decode_read_bytes(roofline.measured_parts(model, tokens=16))  # 16 x 8 >= 128: all
    assert every == roofline.decode_read_bytes(roofline.measured_parts(model))
    dense = tiny_model("llama")
    assert roofline.measured_parts(dense, tokens=1) == roofline.measured_parts(dense)


def test_a_quantized_moe_serves_generates_tokens():
    """The engine (under inference mode) runs the int8 per-expert layers with generate's tokens."""
    from labkit.serve import SamplingParams
    from labkit.serve.engine import EngineConfig, LLMEngine

    q = quantize(tiny_model("qwen3_moe", seed=0), "int8-dynamic-onednn")
    prompts = [models.prompt_ids(n, vocab_size=256, seed=n)[0].tolist() for n in (20, 33, 47)]
    eng = LLMEngine(q, EngineConfig(max_num_seqs=3, block_size=8, num_blocks=64, max_model_len=256))
    outs = eng.generate(prompts, SamplingParams(max_tokens=10, ignore_eos=True))
    refs = [_greedy(q, torch.tensor([p]), 10).tolist() for p in prompts]
    assert outs == refs


def test_the_case_studys_ceiling_for_a_moe_reads_the_experts_its_batch_routes_to():
    """Batching amortises a dense model's weights over the batch; a MoE step of 4 sequences reads the experts
    all 4 route to (up to 4 x top-k), so its throughput ceiling gains less than 4x over one at a time."""
    from labkit.lessons import casestudy
    from labkit.serve.workload import Request

    model = tiny_model("qwen3_moe", seed=0)  # 8 experts, 2 per token: 4 sequences may route to all 8
    spec = models.spec_of_config(model.config)
    trace = [Request(i, 0.0, (5,) * 16, 9) for i in range(4)]
    rows = [{"stage": s, "server": server, "output_throughput": 10.0, "ttft_idle_ms": 5.0}
            for s, server in (("baseline", "sequential"), ("batched", "engine"))]
    card = roofline.Card("test", 16.0, 50.0, {}, "test")  # no matmul rate: the ceilings are the bytes' alone
    proj = casestudy.project(rows, {"baseline": model, "batched": model}, spec, 2, trace, 4, card)
    one = roofline.decode_read_bytes(roofline.measured_parts(model, tokens=1))
    four = roofline.decode_read_bytes(roofline.measured_parts(model, tokens=4))
    assert four > 1.5 * one
    gain = proj[1]["throughput_ceiling"] / proj[0]["throughput_ceiling"]
    assert gain == pytest.approx(4 * one / four) and gain < 3


def test_notebook_02_on_a_moe_says_what_its_floors_count_and_which_code_each_row_runs():
    from labkit.lessons import quantization as qe
    from labkit.lessons import quantization_views as qv

    model = tiny_model("qwen3_moe", seed=0)
    card = roofline.Card("test", 16.0, 40.0, {"fp32": 0.2, "bf16": 0.8, "int8": 1.6}, "test")
    df = qe.benchmark_methods(model, ["int8-dynamic-onednn"], prompt_len=8, new_tokens=4, repeats=2, progress=False,
                              hw=card)
    assert not models.expert_modules(model)[0].__class__.__name__.startswith("Unfused")  # the caller's model as it was
    rows = {r["method"]: r for _, r in df.iterrows()}
    assert rows["int8-dynamic-onednn"]["status"] == "ok"
    line = qv.head_lines(df)[-1]
    assert "counts the 2 of 8 experts a token routes to" in line and "'grouped_mm'" in line
    dense = roofline.decode_read_bytes(roofline.measured_parts(model))
    assert rows["fp32"]["decode_read_mib"] < dense / 2**20  # the routed experts' bytes, not all of them
