import torch

from labkit.techniques.decode import StaticDecoder


def test_static_decoder_matches_generate_token_for_token(tiny_llama):
    ids = torch.randint(3, 256, (1, 17), generator=torch.Generator().manual_seed(3))
    ref = tiny_llama.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=9, min_new_tokens=9)
    dec = StaticDecoder(tiny_llama, max_len=32)
    rt, out = dec.generate(ids, 9)
    assert torch.equal(out, ref)
    assert rt.output_tokens == 9 and rt.prompt_tokens == 17
    rt2, out2 = dec.generate(ids, 9)  # the cache is reset between requests
    assert torch.equal(out2, ref)


def test_compiled_static_decoder_gives_the_same_tokens(tiny_llama):
    ids = torch.randint(3, 256, (1, 11), generator=torch.Generator().manual_seed(4))
    eager = StaticDecoder(tiny_llama, max_len=24).generate(ids, 6)[1]
    compiled = StaticDecoder(tiny_llama, max_len=24, compile=True)
    assert torch.equal(compiled.generate(ids, 6)[1], eager)
    assert torch.equal(compiled.generate(ids, 6)[1], eager)


def test_static_decoder_refuses_what_does_not_fit(tiny_llama):
    import pytest

    dec = StaticDecoder(tiny_llama, max_len=8)
    with pytest.raises(ValueError, match="exceed the cache"):
        dec.generate(torch.ones(1, 6, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="batch size 1"):
        dec.generate(torch.ones(2, 3, dtype=torch.long), 2)


def _quantized_step(x, w, k):  # int8-dynamic's arithmetic in plain torch: per-token scale, int8 x int8 -> int32
    s = x.abs().amax(-1, keepdim=True) / 127
    xq = torch.round(x / s).clamp(-127, 127).to(torch.int8)
    return torch._int_mm(xq.reshape(-1, k), w.t()).float() * s.reshape(-1, 1)


def test_compiled_int8_decode_step_is_right_for_one_token():
    """A decode step at batch 1 quantizes a 1x1xK activation inside the compiled graph; torch 2.13's CPU _int_mm
    returned garbage for the layout inductor gives it. With labkit's workaround applied (it is a no-op where the
    bug is absent), the compiled step equals eager."""
    from labkit.techniques.decode import work_around_int_mm_bug

    work_around_int_mm_bug("cpu")
    g = torch.Generator().manual_seed(0)
    w = torch.randint(-127, 128, (96, 64), dtype=torch.int8, generator=g)
    x = torch.randn(1, 1, 64, generator=g)
    torch._dynamo.reset()
    with torch.inference_mode():
        got = torch.compile(_quantized_step, dynamic=False)(x, w, 64)
        assert torch.allclose(got, _quantized_step(x, w, 64))


def test_count_compiles_sees_frames_and_graph_breaks():
    from labkit.techniques.decode import count_compiles

    def f(x):
        y = x.sin()
        torch._dynamo.graph_break()
        return y.cos()

    torch._dynamo.reset()
    g = torch.compile(f, dynamic=False)
    with count_compiles() as c:
        g(torch.ones(3))
    assert c.stats.frames >= 2 and c.stats.graph_breaks >= 1 and c.stats.reasons
    with count_compiles() as warm:
        g(torch.ones(3))
    assert warm.stats.frames == 0 and warm.stats.graph_breaks == 0


def test_choose_prefill_keeps_tokens_and_records_the_choice(tiny_llama):
    ids = torch.randint(3, 256, (1, 12), generator=torch.Generator().manual_seed(5))
    eager = StaticDecoder(tiny_llama, max_len=20).generate(ids, 5)[1]
    dec = StaticDecoder(tiny_llama, max_len=20, compile=True)
    choice = dec.choose_prefill(ids)
    assert choice["prefill"] in ("compiled", "eager") and choice["compiled_ms"] > 0 and choice["eager_ms"] > 0
    assert dec.eager_prefill == (choice["eager_ms"] < choice["compiled_ms"])
    for forced in (True, False):  # either prefill path feeds the compiled decode steps the same cache
        dec.eager_prefill = forced
        assert torch.equal(dec.generate(ids, 5)[1], eager)


def test_profile_decode_accounts_for_the_profiled_time(tiny_llama):
    from labkit.techniques.decode import profile_decode

    dec = StaticDecoder(tiny_llama, max_len=16)
    rows = profile_decode(dec.generate, torch.randint(3, 256, (1, 4)), new_tokens=6, top=5)
    assert len(rows) == 6 and rows[-1]["op"] == "(everything else)"
    assert abs(sum(r["share"] for r in rows) - 1) < 1e-6
    assert rows[0]["ms per token"] >= rows[1]["ms per token"] > 0
    assert any("linear" in r["op"] or "addmm" in r["op"] or "mm" in r["op"] for r in rows[:-1])
