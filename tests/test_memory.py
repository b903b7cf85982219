import importlib.util

import pytest
import torch

from labkit.techniques import kernels, memory

MiB = 2**20


def test_cpu_peak_counts_what_the_call_allocates():
    def fn():
        a = torch.empty(MiB, dtype=torch.uint8)
        b = torch.empty(2 * MiB, dtype=torch.uint8)
        del a
        c = torch.empty(MiB // 2, dtype=torch.uint8)
        return b, c

    (b, c), peak = memory.peak_during(fn)
    assert peak.peak == 3 * MiB  # a and b alive at once
    assert peak.net == 2 * MiB + MiB // 2  # what it returned
    assert peak.method == memory.CPU_METHOD


def test_inputs_alive_before_the_call_are_not_counted():
    x = torch.ones(4 * MiB // 4)
    _, peak = memory.peak_during(lambda: x.sum())
    assert peak.peak < 4096


def test_measured_peak_grows_as_n_squared_for_eager_and_as_n_for_flash():
    def peak(backend, n):
        q = torch.randn(1, 2, n, 64)
        return memory.peak_during(lambda: kernels.attention(q, q, q, backend))[1].peak

    eager = peak("eager", 2048) / peak("eager", 1024)
    flash = peak("sdpa-flash", 2048) / peak("sdpa-flash", 1024)  # output, plus work buffers sized by the kernel
    assert 3.6 < eager < 4.4 and 1.0 < flash < 2.3, (eager, flash)


def test_rss_peak_sees_touched_pages():
    _, grown = memory.rss_peak_during(lambda: torch.ones(64 * MiB // 4).sum())
    if grown is None:
        pytest.skip("no /proc on this system")
    assert grown >= 48 * MiB


@pytest.mark.parametrize("name", ["llama-2-13b", "qwen2.5-0.5b"])
def test_kv_formula_matches_the_cache_a_real_prefill_allocates(name):
    from labkit.lessons.kernels import kv_measured

    row = kv_measured([name], [96])
    r = row.iloc[0]
    assert r["cache_bytes"] == r["formula_bytes"]  # MHA (13B) and GQA (qwen: 2 KV heads, not 14) alike
    assert abs(r["allocated_bytes"] / r["formula_bytes"] - 1) < 0.02


def test_int8_cache_holds_about_a_quarter_of_fp32_and_stays_close(tiny_llama):
    from transformers import DynamicCache

    ids = torch.randint(3, 256, (1, 40), generator=torch.Generator().manual_seed(1))
    fp, q8 = DynamicCache(config=tiny_llama.config), memory.int8_kv_cache(tiny_llama.config.num_hidden_layers)
    with torch.inference_mode():
        a = tiny_llama(input_ids=ids, past_key_values=fp).logits
        b = tiny_llama(input_ids=ids, past_key_values=q8).logits
    head_dim = tiny_llama.config.hidden_size // tiny_llama.config.num_attention_heads
    assert memory.cache_bytes(q8) / memory.cache_bytes(fp) == pytest.approx((1 + 4 / head_dim) / 4)
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    assert q8.get_seq_length() == 40
    out = tiny_llama.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                              past_key_values=memory.int8_kv_cache(2))
    assert out.shape == (1, 45)


def test_int8_quantization_round_trip_error_is_bounded():
    x = torch.randn(2, 3, 17, 64)
    q, s = memory.quantize_int8(x)
    assert q.dtype == torch.int8 and s.shape == (2, 3, 17, 1)
    assert ((memory.dequantize_int8(q, s) - x).abs() <= s / 2 + 1e-6).all()


def test_cache_kinds_name_what_is_missing(tiny_llama):
    kinds = memory.kv_cache_kinds()
    assert kinds["fp (DynamicCache)"] is None and kinds["int8 (labkit, per token and head)"] is None
    with pytest.raises(ValueError, match="choose one of"):
        memory.make_cache("int3", tiny_llama)
    if importlib.util.find_spec("hqq") is None:
        assert "not installed" in kinds["hqq int4 (transformers QuantizedCache)"]
        with pytest.raises(RuntimeError, match="hqq is not installed"):
            memory.make_cache("hqq int4 (transformers QuantizedCache)", tiny_llama)


def test_cuda_peak_and_empty_cache_need_cuda():
    if torch.cuda.is_available():
        pytest.skip("this test checks the CPU-only refusal")
    with pytest.raises(RuntimeError, match="needs CUDA"):
        memory.cuda_empty_cache_effect(lambda: None)


def test_int8_kv_cache_costs_little_quality_on_the_trained_model():
    from labkit.core import models
    from labkit.lessons.kernels import kv_quant_study

    m, tok = models.load(models.EMBEDDED), models.load_tokenizer(models.EMBEDDED)
    df = kv_quant_study(m, tok, ["fp (DynamicCache)", "int8 (labkit, per token and head)"], window=256,
                        windows=1, chunk=32, progress=False).set_index("cache")
    i8 = df.loc["int8 (labkit, per token and head)"]
    assert i8["bytes_vs_fp"] == pytest.approx((1 + 4 / 64) / 4)  # fp32 model, head dim 64, fp32 scales
    assert abs(i8["ppl_vs_fp"] - 1) < 0.02 and i8["top1_agreement"] > 0.95
