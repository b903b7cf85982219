import copy

import pytest
import torch

from labkit.core.planner import PlanError
from labkit.techniques import kernels

CASES = {  # heads, kv_heads, queries n, keys end
    "causal MHA": (4, 4, 64, 64),
    "causal GQA": (8, 2, 64, 64),
    "GQA after a cached prefix": (8, 2, 24, 80),  # bottom-right causal: query i sees keys up to 56 + i
}


def _qkv(h, kvh, n, end, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, h, n, 32, generator=g).to(dtype), torch.randn(1, kvh, end, 32, generator=g).to(dtype),
            torch.randn(1, kvh, end, 32, generator=g).to(dtype))


@pytest.mark.parametrize("backend", kernels.BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_every_backend_equals_eager_or_says_why_it_cannot_run(backend, case):
    q, k, v = _qkv(*CASES[case])
    reason = kernels.unsupported(backend, q, k, v)
    if reason:
        with pytest.raises(kernels.KernelSkipped, match="CUDA|not installed|compiler"):
            kernels.attention(q, k, v, backend)
        return
    ref = kernels.attention(q, k, v, "eager")
    torch.testing.assert_close(kernels.attention(q, k, v, backend), ref, rtol=1e-4, atol=1e-5)


def test_eager_is_causal_attention_written_out():
    q, k, v = _qkv(2, 1, 3, 5)
    out = kernels.attention(q, k, v, "eager")
    for i in range(3):  # query i sees keys 0 .. 2 + i, with the single KV head shared by both query heads
        s = (q[0, :, i] @ k[0, 0, : 3 + i].T) / 32**0.5
        torch.testing.assert_close(out[0, :, i], torch.softmax(s, -1) @ v[0, 0, : 3 + i])


def test_bf16_backends_agree_with_eager_within_bf16_rounding():
    q, k, v = _qkv(8, 2, 128, 128, torch.bfloat16)
    ref = kernels.attention(q, k, v, "eager").float()
    for b in ("sdpa", "sdpa-math", "sdpa-flash"):
        torch.testing.assert_close(kernels.attention(q, k, v, b).float(), ref, rtol=2e-2, atol=2e-2)


def test_cuda_only_kernels_are_skipped_with_the_reason_on_a_cpu():
    q, k, v = _qkv(4, 4, 16, 16)
    for b in ("sdpa-efficient", "sdpa-cudnn"):
        assert "CUDA" in kernels.unsupported(b, q, k, v)
    why = kernels.unsupported("flash-attn", q, k, v)
    assert "flash-attn" in why and ("sm80" in why or "not installed" in why)
    assert kernels.unsupported("eager", q, k, v) is None and kernels.unsupported("sdpa-math", q, k, v) is None


def test_bad_backend_names_the_choices():
    q, k, v = _qkv(2, 2, 4, 4)
    with pytest.raises(ValueError, match="sdpa-flash"):
        kernels.attention(q, k, v, "flash2")
    with pytest.raises(ValueError, match="choose one of"):
        kernels.peak_estimate("nope", 1, 2, 2, 4, 4, torch.float32)


def test_the_dispatchers_choice_is_visible():
    q, k, v = _qkv(4, 4, 64, 64, torch.bfloat16)
    assert kernels.sdpa_choice(q, k, v) in ("flash", "math")
    assert kernels.kernel_name("sdpa", q, k, v).startswith("sdpa -> ")
    assert kernels.kernel_name("sdpa-math", q, k, v) == "sdpa -> math"


def test_estimate_grows_as_n_squared_unfused_and_as_n_fused():
    est = {b: [kernels.peak_estimate(b, 1, 40, 40, n, 128, torch.bfloat16) for n in (2048, 4096)]
           for b in ("eager", "sdpa-flash")}
    assert 3.9 < est["eager"][1] / est["eager"][0] <= 4.0
    assert est["sdpa-flash"][1] / est["sdpa-flash"][0] == pytest.approx(2.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_estimate_matches_the_measured_peak(dtype):
    from labkit.techniques.memory import peak_during

    q, k, v = _qkv(8, 2, 512, 512, dtype)
    _, peak = peak_during(lambda: kernels.attention(q, k, v, "eager"))
    est = kernels.peak_estimate("eager", 1, 8, 2, 512, 32, dtype)
    assert 0.9 < peak.peak / est < 1.1, (peak.peak, est)


def test_a_length_that_cannot_fit_is_refused_with_the_estimate():
    need = kernels.peak_estimate("eager", 1, 40, 40, 1 << 20, 128, torch.bfloat16)  # a million tokens
    with pytest.raises(PlanError, match=r"GiB \(estimate\).*refused"):
        kernels.check_fits(need, "eager attention at 1M tokens")
    kernels.check_fits(1 << 20, "a small call")  # 1 MiB fits


def test_static_decoder_inductor_options(tiny_llama):
    from labkit.techniques.decode import StaticDecoder

    ids = torch.randint(3, 256, (1, 9), generator=torch.Generator().manual_seed(5))
    eager = StaticDecoder(tiny_llama, max_len=16).generate(ids, 4)[1]
    frozen = StaticDecoder(tiny_llama, max_len=16, compile=True, options={"freezing": True})
    assert frozen.options == {"freezing": True}
    assert torch.equal(frozen.generate(ids, 4)[1], eager)
    with pytest.raises(ValueError, match="need compile=True"):
        StaticDecoder(tiny_llama, max_len=16, options={"freezing": True})
    with pytest.raises(ValueError, match="unknown inductor option"):
        StaticDecoder(tiny_llama, max_len=16, compile=True, options={"freezeing": True})


def test_roofline_floor_of_eager_counts_the_score_traffic_and_all_scores():
    from labkit.core.roofline import card
    from labkit.lessons import kernels as kx

    a100, lay = card("A100-40GB"), kx.Layout.of("llama-2-13b")
    e, f = kx.attention_floor(a100, lay, 2048, "fp16", "eager"), kx.attention_floor(a100, lay, 2048, "fp16", "flex")
    assert e.flops == pytest.approx(2 * f.flops, rel=1e-3)  # eager computes the masked half too
    assert e.bytes - f.bytes == 40 * 2048 * 2048 * kx.eager_score_traffic(2)
    assert e.bound == "memory" and e.seconds > 3 * f.seconds
    assert kx.length_for_speedup(a100, lay, 3.0) is not None
    assert kx.length_for_speedup(a100, lay, 1e9) is None
    table = kx.roofline_table(lay, [512, 2048], [(a100, "fp16"), (a100, "fp32")])
    assert len(table) == 4 and set(table["dtype"]) == {"fp16", "fp32"}
    at = table[(table["dtype"] == "fp16") & (table["n"] == 2048)].iloc[0]
    assert at["x_fused_vs_eager"] == pytest.approx(e.seconds / f.seconds)


def test_resolve_parameters_takes_the_preset_and_checks_what_is_given():
    from labkit.core import hardware
    from labkit.core.params import ParamError
    from labkit.lessons import kernels as kx

    ci, full = kx.resolve_parameters("ci", device="cpu"), kx.resolve_parameters("full", device="cpu")
    assert ci.device == "cpu" and max(ci.lengths) <= max(full.lengths) and ci.rounds <= full.rounds
    assert set(ci.compile_variants) < set(full.compile_variants) == set(kx.COMPILE_VARIANTS)
    assert set(ci.precisions) < set(full.precisions) == set(kx.PRECISIONS) and ci.kv_shapes == list(kx.KV_SHAPES)
    assert ci.attn_dtype == ("bf16" if hardware.matrix_units()["bf16"] else "fp32")  # on a CPU, None picks this
    mine = kx.resolve_parameters("ci", device="cpu", lengths=[64, 128], backends=["eager"], attn_dtype="fp32",
                                 layers=3)
    assert (mine.lengths, mine.backends, mine.attn_dtype, mine.layers) == ([64, 128], ["eager"], "fp32", 3)
    device, seed, *_ = mine  # the notebook unpacks it
    assert (device, seed) == ("cpu", 0)
    with pytest.raises(ParamError, match="sdpa-flash"):  # the message names the valid choices
        kx.resolve_parameters("ci", backends=["flashy"])
    with pytest.raises(ParamError, match="lengths"):
        kx.resolve_parameters("ci", lengths=[8])
    with pytest.raises(ParamError, match="attn_dtype"):
        kx.resolve_parameters("ci", attn_dtype="int8")
    with pytest.raises(ParamError, match="preset"):
        kx.resolve_parameters("medium")


def test_growth_exponent_reads_quadratic_and_linear():
    import pandas as pd

    from labkit.lessons.kernels import growth

    df = pd.DataFrame({"backend": ["a"] * 3 + ["b"] * 3, "n": [256, 512, 1024] * 2,
                       "peak_MiB": [1, 4, 16, 1, 2, 4]})
    assert growth(df, "peak_MiB") == pytest.approx({"a": 2.0, "b": 1.0})


def test_attention_sweep_rows_skip_refuse_and_measure():
    from labkit.lessons import kernels as kx

    lay = kx.Layout("tiny", 4, 2, 16)
    df = kx.attention_sweep([lay], [32, 64], ["eager", "sdpa-flash", "sdpa-cudnn"], torch.float32, rounds=1,
                            progress=False)
    ok = df[df["status"] == "ok"]
    assert set(ok["backend"]) == {"eager", "sdpa-flash"} and (ok["max_abs_err_vs_eager"] < 1e-5).all()
    assert df[df["backend"] == "sdpa-cudnn"]["status"].str.startswith("skipped: ").all()
    plan = kx.plan_lengths(lay, [1 << 22], ["eager", "sdpa-flash"], torch.float32)
    assert plan.set_index("backend").loc["eager", "plan"] == "refused"
    assert "GiB (estimate)" in plan.set_index("backend").loc["eager", "message"]


def test_compile_study_reports_compile_time_first_call_and_recompiles_apart(tiny_llama):
    from labkit.core.models import ShapeSpec
    from labkit.lessons import kernels as kx

    spec = ShapeSpec("tiny", "llama", 64, 128, 2, 4, 2, 256, 256, 10000.0)
    df, decoders = kx.compile_study(tiny_llama, spec, 2, prompt_len=12, new_tokens=4, variants=["eager", "compile"],
                                    rounds=1, progress=False)
    r = df.set_index("variant")
    assert set(decoders) == {"eager", "compile"} and bool(r.loc["compile", "same_tokens_as_eager"])
    assert r.loc["eager", "compile_s"] == 0 and r.loc["eager", "graphs"] == 0
    c = r.loc["compile"]
    assert c["graphs"] == 2 and c["compile_s"] > 0 and c["steady_recompiles"] == 0  # prefill, decode; none later
    assert c["first_run_s"] == pytest.approx(c["cold_s"] - c["compile_s"])
    assert any("size mismatch" in x for x in c["recompile_reasons"])  # decode's shapes differ from the prefill's
    assert c["cold_over_warm"] > 1
    profiles = kx.compile_profiles(decoders, spec, 12)
    assert {"eager prefill", "eager decode", "compile prefill", "compile decode"} == set(profiles)
    assert 0 < profiles["eager decode"]["matmul_share"] < 1
    table = kx.profile_table(profiles)
    assert list(table["step"]) == list(profiles) and (table["matmul_ms"] <= table["total_ms"]).all()
    with pytest.raises(ValueError, match="unknown compile variant"):
        kx.compile_study(tiny_llama, spec, 2, 12, 4, ["compile+magic"])


def _packable_or_skip():
    reason = kernels.prepack_unsupported(torch.nn.Linear(2, 2))
    if reason:
        pytest.skip(reason)


def test_packed_linear_computes_the_linear_and_keeps_one_row_on_the_original():
    _packable_or_skip()
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(96, 40)
    p = kernels.PackedLinear(lin)
    with torch.no_grad():
        for rows in (2, 8, 33):
            x = torch.randn(rows, 96, generator=g)
            assert torch.allclose(p(x), lin(x), rtol=1e-4, atol=1e-5)
        x3 = torch.randn(2, 5, 96, generator=g)
        assert p(x3).shape == (2, 5, 40) and torch.allclose(p(x3), lin(x3), rtol=1e-4, atol=1e-5)
        one = torch.randn(1, 1, 96, generator=g)
        assert torch.equal(p(one), lin(one))  # one row: the original layer, bit for bit
        c = copy.deepcopy(p)  # oneDNN's packed tensor is not copied: the copy packs its own on first use
        x = torch.randn(8, 96, generator=g)
        assert c._packed is None and torch.allclose(c(x), lin(x), rtol=1e-4, atol=1e-5)
        c.to(torch.bfloat16)  # cast after packing: not fp32, so the original (now bf16) layer computes it
        xb = torch.randn(8, 96, generator=g).bfloat16()
        assert torch.equal(c(xb), c.linear(xb))


def test_prepack_linears_swaps_fp32_linears_of_a_copy(tiny_llama):
    _packable_or_skip()
    packed = kernels.prepack_linears(tiny_llama)
    swapped = [n for n, m in packed.named_modules() if isinstance(m, kernels.PackedLinear)]
    assert len(swapped) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer and the head
    assert not any(isinstance(m, kernels.PackedLinear) for m in tiny_llama.modules())  # the original is untouched
    ids = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(packed(ids).logits, tiny_llama(ids).logits, rtol=1e-4, atol=1e-4)
    meta = torch.nn.Linear(2, 2, device="meta")
    assert "x86 CPUs, not meta" in kernels.prepack_unsupported(meta)
    with pytest.raises(kernels.KernelSkipped, match="not meta"):
        kernels.prepack_linears(meta)


def test_try_this_gives_only_the_fused_kernels_estimates_beside_eagers_refusal():
    import pandas as pd

    from labkit.lessons.kernels import summary

    plan = pd.DataFrame([{"n": 8192, "backend": "eager", "plan": "refused", "estimate_GiB": 20.8},
                         {"n": 8192, "backend": "sdpa-math", "plan": "ok", "estimate_GiB": 20.2},  # n x n too
                         {"n": 8192, "backend": "sdpa-flash", "plan": "ok", "estimate_GiB": 0.30},
                         {"n": 8192, "backend": "flex", "plan": "ok", "estimate_GiB": 0.31}])
    assert "the fused kernels' estimates there are 0.30-0.31 GiB" in summary.plan_line(plan)
