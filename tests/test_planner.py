"""The roofline and the memory planner against values computed by hand."""


import pytest
import torch

from labkit.core import planner as P
from labkit.core import roofline as R
from labkit.core.models import ShapeSpec, config_for, shape

GiB = 2**30

# Llama-2-7B by hand: per layer q,k,v,o = 4 x 4096^2, MLP = 3 x 4096 x 11008, two norms = 2 x 4096.
L7 = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
P7 = 32 * L7 + 2 * 32000 * 4096 + 4096


def test_7b_parameters_and_fp16_weights():
    s7 = shape("llama-2-7b")
    assert s7.params() == P7 == 6_738_415_616
    fp16 = R.weight_bytes(s7, "fp16")
    assert fp16 == 2 * P7
    assert fp16 / 1e9 == pytest.approx(13.48, abs=0.01)  # the "13.5 GB" everyone quotes is decimal GB
    assert fp16 / GiB == pytest.approx(12.55, abs=0.01)
    assert R.weight_bytes(s7, "fp32") == 4 * P7
    assert R.weight_bytes(s7, "bf16") == fp16


def test_quantized_weights_keep_embeddings_16_bit():
    s7 = shape("llama-2-7b")
    linear = 32 * (L7 - 2 * 4096)
    rest = (2 * 32000 * 4096 + (2 * 32 + 1) * 4096) * 2
    assert R.weight_bytes(s7, "int8") == linear * 1 + rest
    assert R.weight_bytes(s7, "int4") == pytest.approx(linear * (0.5 + 4 / 128) + rest)


def test_kv_cache_per_token_formula():
    s7, s13, l3 = shape("llama-2-7b"), shape("llama-2-13b"), shape("llama-3-8b")
    assert R.kv_cache_bytes(s7, "fp16", context=1) == 2 * 32 * 32 * 128 * 2 == 512 * 1024
    assert R.kv_cache_bytes(s13, "fp16", context=1) == 2 * 40 * 40 * 128 * 2
    assert R.kv_cache_bytes(l3, "bf16", context=1) == 2 * 32 * 8 * 128 * 2  # GQA: 8 KV heads
    assert R.kv_cache_bytes(s7, "fp32", context=4096, batch=3) == 3 * 4096 * 2 * 32 * 32 * 128 * 4
    assert R.kv_cache_bytes(s7, "int8", context=1) == 2 * 32 * 32 * 128 * 2  # weights int8, cache 16-bit


@pytest.mark.parametrize("tied,bias", [(False, False), (True, True)])
def test_weight_bytes_match_a_real_transformers_model(tied, bias):
    """The formula agrees with the parameters of the model transformers builds from the same shape."""
    from transformers import AutoModelForCausalLM

    spec = ShapeSpec("tiny", "qwen2" if bias else "llama", 64, 176, 4, 4, 2, 300, 128, 10000.0,
                     tie_word_embeddings=tied, attention_bias=bias)
    model = AutoModelForCausalLM.from_config(config_for(spec, 3), dtype=torch.float32)
    n = sum(p.numel() for p in model.parameters())
    assert R.weight_bytes(spec, "fp32", layers=3) == 4 * n
    assert R.weight_bytes(spec, "bf16", layers=3) == 2 * n
    # measured from the built model's stored weights, scaled to another depth: the same parts as the formula
    assert R.measured_parts(model, layers=7) == R._parts(spec, "fp32", 7)
    table = 300 * 64 * 4  # a decode step reads the embedding table only when it is the (tied) head
    assert R.decode_read_bytes(R.measured_parts(model)) == R.decode_weight_bytes(spec, "fp32", 3) == \
        4 * n - (0 if tied else table)


def test_decode_floor_of_7b_on_a_v100():
    s7, v100 = shape("llama-2-7b"), R.card("V100-16GB")
    f = R.decode_floor(s7, "fp16", v100, context=512)
    streamed = 2 * (32 * L7 + 4096 + 32000 * 4096)  # the embedding table is a lookup, the lm_head is read
    kv = 512 * 2 * 32 * 32 * 128 * 2
    assert f.bytes == streamed + kv
    assert f.seconds == pytest.approx((streamed + kv) / 900e9)
    assert f.seconds * 1e3 == pytest.approx(14.98, abs=0.01)
    assert f.bound == "memory"
    assert f.fraction(0.300) == pytest.approx(f.seconds / 0.300)


def test_prefill_floor_is_compute_bound_and_counts_flops():
    s7, a100 = shape("llama-2-7b"), R.card("A100-40GB")
    flops = R.forward_flops(s7, new_tokens=512)
    by_hand = 2 * 512 * 32 * (L7 - 2 * 4096) + 4 * 32 * 4096 * (512 * 513 // 2) + 2 * 4096 * 32000
    assert flops == by_hand
    f = R.prefill_floor(s7, "bf16", a100, prompt=512)
    assert f.bound == "compute"
    assert f.seconds == pytest.approx(by_hand / 312e12)
    assert f.intensity > 312e12 / 1555e9  # beyond the ridge point


def test_v100_has_no_bf16_and_int8_falls_back_to_fp16():
    v100 = R.card("V100-16GB")
    assert v100.peak("bf16") is None
    assert v100.peak("int8") == v100.peak("fp16") == 125e12
    assert R.prefill_floor(shape("llama-2-7b"), "bf16", v100, 512).compute_s is None
    with pytest.raises(ValueError, match="unknown card"):
        R.card("V200")
    with pytest.raises(ValueError, match="unknown dtype"):
        R.weight_bytes(shape("llama-2-7b"), "fp8")


def test_memory_plan_13b_and_claim_c3():
    s13 = shape("llama-2-13b")
    plan = P.memory_plan("llama-2-13b", "fp16", context=4096, batch=1)
    assert plan.weights == 2 * s13.params()
    assert plan.kv_cache == 4096 * 2 * 40 * 40 * 128 * 2 == 3.125 * GiB
    assert plan.total == plan.weights + plan.kv_cache + plan.activations
    a100 = R.card("A100-40GB")
    assert P.cards_needed(plan, a100) == 1  # 27.9 GiB of 36 usable: one A100-40GB is enough in fp16
    assert P.cards_needed(P.memory_plan("llama-2-13b", "fp32", 4096), a100) == 2
    assert P.cards_needed(P.memory_plan("llama-2-13b", "fp32", 4096), R.card("A100-80GB")) == 1
    b = P.max_batch("llama-2-13b", "fp16", 4096, a100)
    assert P.memory_plan("llama-2-13b", "fp16", 4096, b).per_card() <= 0.9 * 40 * GiB
    assert P.memory_plan("llama-2-13b", "fp16", 4096, b + 1).per_card() > 0.9 * 40 * GiB


def test_tensor_parallel_splits_weights_and_cache_not_activations():
    plan = P.memory_plan("llama-2-13b", "fp16", 2048, 2)
    assert plan.per_card(4) == pytest.approx((plan.weights + plan.kv_cache) / 4 + plan.activations)


def test_fit_table_rows():
    rows = P.fit_table("llama-2-7b", 4096, 1)
    assert [r["dtype"] for r in rows] == list(R.DTYPES)
    by = {r["dtype"]: r for r in rows}
    assert by["bf16"]["V100-16GB"] == "no bf16"
    assert by["fp16"]["RTX-4090"] == "1x"
    assert by["fp32"]["RTX-4090"] == "2x"
    assert by["int4"]["weights_gib"] < by["int8"]["weights_gib"] < by["fp16"]["weights_gib"]


def test_no_fit_message_names_the_smallest_configuration():
    with pytest.raises(P.PlanError) as e:
        P.check_fit("llama-2-7b", "fp16", 4096, 1, R.card("V100-16GB"))
    msg = str(e.value)
    assert "does not fit 1x V100-16GB" in msg
    assert "Smallest configuration that fits on this card: int8, context 4,096, batch 1 on 1x V100-16GB" in msg
    assert P.check_fit("llama-2-7b", "int8", 4096, 1, R.card("V100-16GB")).dtype == "int8"
    with pytest.raises(P.PlanError, match="cannot run bf16"):
        P.check_fit("llama-2-7b", "bf16", 512, 1, R.card("V100-32GB"))


def test_query_that_fits_nowhere():
    with pytest.raises(P.PlanError) as e:
        P.where_it_fits("llama-2-13b", "fp32", 2**20, 64)
    msg = str(e.value)
    assert "fits nowhere" in msg and "Smallest configuration that would fit" in msg
    s = P.smallest_fit("llama-2-13b", "fp32", 2**20, 64)
    assert s["plan"].per_card(s["cards"]) <= 0.9 * R.card(s["card"]).memory_gib * GiB
    assert s["context"] < 2**20 or s["batch"] < 64
    rows = P.where_it_fits("llama-2-7b", "fp16", 4096, 1)
    assert {"card": "V100-16GB", "cards": 2} == {k: rows[0][k] for k in ("card", "cards")}


def test_bad_queries():
    with pytest.raises(ValueError, match="context and batch"):
        P.memory_plan("llama-2-7b", "fp16", 0)
    with pytest.raises(ValueError, match="unknown shape"):
        P.memory_plan("llama-9-1t", "fp16", 512)


def _profile(tpot_s: float, prefill_s: float) -> dict:
    probes = {"cpu": {"bandwidth_gbps": {"read": 20.0, "best": 20.0}, "matvec_gbps": {"fp32": 16.0, "int8": 8.0},
                      "matmul_gflops": {"fp32": 200.0, "bf16": 400.0, "fp16": 20.0, "int8": 500.0}}}
    hw = R.this_machine(probes, memory_gib=16)
    baseline = {"prompt_tokens": 128, "new_tokens": 8, "decode_context": 132, "tpot_s": tpot_s,
                "prefill_s": prefill_s}
    card = P.profile_card(probes, baseline, shape("llama-2-7b"), "fp32", 2, hw,
                          agreement=[{"ratio": 1.1}, {"ratio": 0.95}])
    return card, hw


def test_profile_card_fractions_and_predictions():
    card, hw = _profile(tpot_s=0.2, prefill_s=1.0)
    s7 = shape("llama-2-7b")
    assert hw.bandwidth_gbps == 20.0 and hw.peak("int4") == hw.peak("bf16") == 400e9
    floor = R.decode_floor(s7, "fp32", hw, 132, 1, layers=2).seconds
    assert card["baseline"]["decode_fraction"] == pytest.approx(floor / 0.2)
    assert card["agreement"]["max_deviation"] == pytest.approx(0.1)
    pred = R.predict(card, s7, "fp32", prompt=128, new_tokens=8, layers=2)
    assert pred["decode_expected_s"] == pytest.approx(0.2)  # same run, same layers: back to the measurement
    assert pred["prefill_expected_s"] == pytest.approx(1.0)
    full = R.predict(card, s7, "fp32", prompt=128, new_tokens=8)
    assert full["decode_floor_s"] > pred["decode_floor_s"]


def test_predictions_per_dtype_from_matvec_rates():
    card, hw = _profile(tpot_s=0.2, prefill_s=1.0)
    s7 = shape("llama-2-7b")
    rows = {r["dtype"]: r for r in card["predictions"]}
    assert set(rows) == {"fp32", "int8"}  # only the dtypes that were probed
    kv = R.kv_cache_bytes(s7, "fp32", 128) / 20e9
    assert rows["fp32"]["at measured matvec rate ms"] == pytest.approx((R.decode_weight_bytes(s7, "fp32") / 16e9
                                                                        + kv) * 1e3)
    kv8 = R.kv_cache_bytes(s7, "int8", 128) / 20e9
    expected = (R.decode_weight_bytes(s7, "fp32") / 16e9 + kv) / (R.decode_weight_bytes(s7, "int8") / 8e9 + kv8)
    assert rows["int8"]["predicted speed-up vs fp32"] == pytest.approx(expected)
    assert rows["fp32"]["predicted speed-up vs fp32"] == 1.0


def test_this_machine_is_one_device_in_the_planner():
    _, hw = _profile(tpot_s=0.2, prefill_s=1.0)  # 16 GiB, measured
    assert hw.measured and hw.memory_gib == 16
    assert P.cards_needed(P.memory_plan("llama-2-7b", "fp16", 4096), hw) is None  # 15 GiB > 14.4 usable
    assert P.cards_needed(P.memory_plan("llama-2-7b", "int8", 4096), hw) == 1
    row = P.fit_table("llama-2-7b", 4096, 1, [hw])[0]
    assert row[hw.name] == "-"  # fp32: never "2x" of this machine


def test_against_floor_words_come_from_the_numbers():
    from labkit.core import roofline as R
    from labkit.core.models import shape

    card = R.Card("test", 16.0, 50.0, {"fp32": 0.2, "bf16": 0.8, "int8": 1.6}, "test")
    f = R.decode_floor(shape("llama-2-7b"), "fp32", card, 512, layers=2)
    close = R.against_floor(f, f.seconds / 0.9, card, "fp32")
    assert close.startswith("90% of the memory-bound floor") and "Why" not in close
    far = R.against_floor(f, f.seconds * 4, card, "fp32")
    assert far.startswith("25% of the memory-bound floor") and "4.0x the floor" in far
    assert f"{f.bytes / (f.seconds * 4) / 1e9:,.1f} GB/s against the probe's 50.0 GB/s" in far
    p = R.prefill_floor(shape("llama-2-7b"), "fp32", card, 512, layers=2)
    assert "GFLOP/s against the 200 GFLOP/s the fp32 matmul probe reached" in R.against_floor(p, p.seconds * 2, card,
                                                                                            "fp32")
    beaten = R.against_floor(p, p.seconds / 1.8, card, "fp32", "quick probes")  # 180% of the floor: a rate was wrong
    assert beaten.startswith("100% of its floor") and "beat its floor" in beaten and "quick probes" in beaten
    assert "fp32 matmul rate" in beaten and "180%" not in beaten
