import torch

from labkit.decode import StaticDecoder


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
