"""labkit.techniques.quant: every method on a small seeded Llama (shape kept, bytes shrink, logits close to fp32), and
the property that defines GPTQ and AWQ: lower layer-output error than round-to-nearest on the calibration
activations, at the same bits and group size. No timing assertions."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from labkit.core import models, onednn
from labkit.core.models import EMBEDDED, MODELS_DIR
from labkit.techniques import quant, quant_onednn

GROUP = 64
# Relative L2 error of the logits against fp32 that each method must stay under, on the seeded model below.
# 8-bit grids lose ~1-4% here (per-tensor legacy the most); 4-bit ones ~15-20%; bf16 alone ~1%.
TOL = {"int8-weight-only": 0.05, "int8-dynamic": 0.05, "int8-dynamic-onednn": 0.05, "int8-dynamic-legacy": 0.08,
       "bnb-int8": 0.05, "bnb-nf4": 0.3, "int4-rtn": 0.3, "rtn": 0.3, "gptq": 0.3, "awq": 0.3}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest


@pytest.fixture(scope="module")
def small():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg).eval()
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(input_ids=x).logits
    return model, x, calib, ref


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("method", [m for m in quant.METHODS if m != "gptqmodel"])
def test_method_keeps_shape_shrinks_and_stays_close(small, method):
    model, x, calib, ref = small
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = copy.deepcopy(model).to(torch.bfloat16) if method == "int4-rtn" else model  # its CPU kernel is bf16
    try:
        q = quant.quantize(base, method, calib=calib, group_size=GROUP)
    except quant.QuantSkipped as e:
        pytest.skip(f"skipped here: {e}")
    with torch.no_grad():
        out = q(input_ids=x).logits
    assert out.shape == ref.shape
    assert _rel(out, ref) < TOL[method], f"{method}: logits moved {_rel(out, ref):.3f} from fp32"
    info = q.labkit_quant
    # codes plus scales: on these 128-wide rows a per-row fp32 scale and zero point add up to 0.5 bit
    assert info.bits_per_weight <= (8.5 if "int8" in method else 4.75), info
    if not info.fake:
        assert info.bytes < models.weight_bytes(model)
    assert info.seconds >= 0
    for k, v in model.state_dict().items():  # the input model is left as it was
        assert torch.equal(v, before[k]), k


def _onednn_or_skip():
    reason = onednn.onednn_unsupported("cpu")
    if reason:
        pytest.skip(reason)


def test_onednn_int8_linear_is_the_per_token_w8a8_formula_and_batch_invariant():
    """OneDNNInt8Linear computes s_token * s_channel * (int8 x . int8 w) + bias: equal to that formula written
    in fp64 within fp32 rounding, each row bit-identical whether it is computed alone or among 37 other rows,
    and about as close to fp32 as torchao's int8-dynamic (per-token too, on a grid of +-127.5 instead of +-127)."""
    _onednn_or_skip()
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(192, 80)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(80, 192, generator=g) * 0.05)
    x = torch.randn(38, 192, generator=g) * torch.exp(torch.randn(192, generator=g))  # outlier channels
    q = quant_onednn.OneDNNInt8Linear.from_linear(lin)
    with torch.no_grad():
        y = q(x)
        s = x.abs().amax(1, keepdim=True) / 127
        xq = torch.round(x / s).clamp(-127, 127)
        ref = (xq.double() @ q.weight.double().T) * s.double() * q.weight_scale.double() + lin.bias.double()
        assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5)
        assert _rel(y, lin(x)) < 0.02  # and close to the fp32 layer
        for i in (0, 17, 37):
            assert torch.equal(q(x[i:i + 1])[0], y[i])
        assert torch.equal(q(x[5:13]), y[5:13])
        y3 = q(x.reshape(2, 19, 192))  # any leading shape, as nn.Linear
        assert torch.equal(y3.reshape(38, 80), y)
        assert q(x.bfloat16()).dtype == torch.bfloat16
        c = copy.deepcopy(q)  # oneDNN's packed copy is not deep-copyable; the copy packs its own
        assert torch.equal(c(x), y)
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        except ImportError:
            return
        ao = nn.Sequential(copy.deepcopy(lin))
        quantize_(ao, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
        assert _rel(y, lin(x)) < 1.5 * _rel(ao(x), lin(x))


def test_onednn_small_calls_are_padded_past_the_reference_kernel_on_amx(monkeypatch):
    """On AMX, oneDNN runs an int8 matmul of at most 256 rows x outputs in its slow reference kernel (a decode
    step's GQA k/v projection): such a call gets zero rows up to 257 and more, and returns its own rows unchanged,
    bit-identical to the unpadded call; without AMX, and for a call past 256, nothing is padded."""
    _onednn_or_skip()
    g = torch.Generator().manual_seed(2)
    lin = nn.Linear(96, 128)
    q = quant_onednn.OneDNNInt8Linear.from_linear(lin)
    seen = []
    real = quant_onednn._qlinear
    monkeypatch.setattr(quant_onednn, "_qlinear", lambda xq, *a: (seen.append(xq.shape[0]), real(xq, *a))[1])
    x = torch.randn(3, 96, generator=g)
    with torch.no_grad():
        for amx, rows, called in ((False, 1, 1), (False, 2, 2), (True, 1, 3), (True, 2, 3), (True, 3, 3)):
            monkeypatch.setattr(quant_onednn, "cpu_features", lambda amx=amx: {"amx_int8": amx})
            seen.clear()
            quant_onednn._last_tokens = (lambda: None, None, None, None)
            y = q(x[:rows])
            assert seen == [called] and y.shape == (rows, 128)
            monkeypatch.setattr(quant_onednn, "cpu_features", lambda: {"amx_int8": False})
            quant_onednn._last_tokens = (lambda: None, None, None, None)
            assert torch.equal(y, q(x[:rows]))


def test_onednn_siblings_fed_one_tensor_quantize_it_once():
    """q/k/v (gate/up) projections receive the same tensor: the second layer reuses the int8 rows of the first
    instead of quantizing again, with outputs bit-identical to quantizing afresh; another tensor with the same
    values, an in-place change (outside inference mode) or a tensor of another width is quantized again."""
    _onednn_or_skip()
    g = torch.Generator().manual_seed(1)
    a, b = nn.Linear(64, 32), nn.Linear(64, 48)
    qa, qb = quant_onednn.OneDNNInt8Linear.from_linear(a), quant_onednn.OneDNNInt8Linear.from_linear(b)
    x = torch.randn(5, 64, generator=g)

    def fresh(layer, t):
        quant_onednn._last_tokens = (lambda: None, None, None, None)
        return layer(t)

    with torch.no_grad():
        ya = qa(x)
        first = quant_onednn._last_tokens[2]
        yb = qb(x)
        assert quant_onednn._last_tokens[2] is first  # reused, not recomputed
        assert torch.equal(ya, fresh(qa, x)) and torch.equal(yb, fresh(qb, x))
        qa(x)
        qb(x.clone())  # equal values, another tensor: quantized again
        assert quant_onednn._last_tokens[2] is not first
        qa(x)
        x.mul_(3)  # in place: the version counter moves, the cached rows are stale
        assert torch.equal(qb(x), fresh(qb, x))
        assert _rel(qb(x), b(x)) < 0.02
        with pytest.raises(ValueError, match="64"):
            qa(torch.randn(5, 32))
        with pytest.raises(ValueError, match="runs on the CPU"):
            qa(torch.empty(5, 64, device="meta"))
    assert quant_onednn.OneDNNInt8Linear.from_linear(a)._packed is not None  # packed when quantized, not in a request
    with torch.inference_mode():
        xi = torch.randn(5, 64, generator=g)
        assert torch.equal(qb(xi), fresh(qb, xi)) and torch.equal(qa(xi), fresh(qa, xi))


def test_bad_inputs_fail_clearly(small):
    model, _, calib, _ = small
    with pytest.raises(ValueError, match="unknown method"):
        quant.quantize(model, "int3-magic")
    with pytest.raises(ValueError, match="calibration"):
        quant.quantize(model, "gptq")
    with pytest.raises(quant.QuantSkipped, match="bf16"):
        quant.quantize(model, "int4-rtn")
    with pytest.raises(ValueError, match="multiple of group_size"):
        quant.fake_quant(torch.randn(4, 100), group_size=64)


def test_gptqmodel_is_optional(small):
    model, _, calib, _ = small
    try:
        import gptqmodel  # noqa: F401
    except ImportError:
        with pytest.raises(quant.QuantSkipped, match="GPTQModel is not installed"):
            quant.quantize(model, "gptqmodel", calib=calib)
    else:
        pytest.skip("GPTQModel is installed")


def test_fake_quant_grid():
    w = torch.randn(8, 128, generator=torch.Generator().manual_seed(0))
    q = quant.fake_quant(w, bits=4, group_size=32)
    for g in q.reshape(8, 4, 32).reshape(32, 32):
        assert g.unique().numel() <= 16
    assert torch.allclose(quant.fake_quant(q, bits=4, group_size=32), q, atol=1e-5)  # already on the grid
    assert (q - w).abs().max() < (w.max() - w.min()) / 15


def _seeded_layer(seed: int = 0, n_in: int = 256, n_out: int = 128, tokens: int = 1024):
    """A linear layer and calibration activations like an LLM's: a few input channels much larger than the
    rest, and channels correlated with each other."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=g) / n_in**0.5
    mix = torch.eye(n_in) + 0.3 * torch.randn(n_in, n_in, generator=g) / n_in**0.5
    x = (torch.randn(tokens, n_in, generator=g) * torch.exp(torch.randn(n_in, generator=g))) @ mix
    return w, x


def _out_err(w: torch.Tensor, wq: torch.Tensor, x: torch.Tensor) -> float:
    return float((x @ wq.T - x @ w.T).pow(2).mean())


@pytest.mark.parametrize("group_size", [GROUP, None])
@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_and_awq_beat_rtn_on_calibration_activations(bits, group_size):
    w, x = _seeded_layer()
    rtn = _out_err(w, quant.fake_quant(w, bits, group_size), x)
    gptq = _out_err(w, quant.gptq_weight(w, 2 * x.T @ x / x.shape[0], bits, group_size), x)
    s = quant.awq_scales([w], x, bits, group_size)
    awq = _out_err(w, quant.fake_quant(w * s, bits, group_size) / s, x)
    assert gptq < 0.8 * rtn, (gptq, rtn)
    assert awq < rtn, (awq, rtn)


def test_gptq_and_awq_through_the_model(small):
    """Wired into the model, the first layer's projections (whose inputs no earlier quantized layer changes)
    have lower output error on the calibration activations than RTN's."""
    model, _, calib, _ = small
    qs = {m: quant.quantize(model, m, calib=calib, group_size=GROUP) for m in ("rtn", "gptq", "awq")}
    inputs = quant._layer_inputs(model, model.model.layers[0], calib, ("lm_head",), 4096)
    errs = {m: {} for m in qs}
    for name, (lin, x, _) in inputs.items():
        for m, q in qs.items():
            errs[m][name] = _out_err(lin.weight, q.model.layers[0].get_submodule(name).weight, x)
    for name in inputs:
        assert errs["gptq"][name] < errs["rtn"][name], name
        assert errs["awq"][name] <= errs["rtn"][name], name
    assert sum(errs["awq"].values()) < sum(errs["rtn"].values())


def test_stored_bytes_counts_packed_tensors():
    lin = nn.Sequential(nn.Linear(256, 128, bias=False))
    assert models.weight_bytes(lin) == 256 * 128 * 4
    q = quant.quantize(lin, "int8-weight-only", skip=())
    # int8 codes, plus one scale (and zero point) per output row
    assert 256 * 128 <= q.labkit_quant.linear_bytes <= 256 * 128 + 128 * 16
    assert models.saved_bytes(q) > q.labkit_quant.linear_bytes


def test_calibration_windows_are_seeded_and_come_from_the_training_side():
    class Tok:  # one id per character: enough to check windows and seeding
        def __call__(self, text, return_tensors=None, verbose=None):
            return {"input_ids": torch.tensor([[ord(c) for c in text]])}

    a = models.prompt_ids(50, batch=3, tokenizer=Tok(), seed=0, source="calibration")
    b = models.prompt_ids(50, batch=3, tokenizer=Tok(), seed=0, source="calibration")
    assert a.shape == (3, 50) and torch.equal(a, b)
    assert not torch.equal(a, models.prompt_ids(50, batch=3, tokenizer=Tok(), seed=1, source="calibration"))
    calib = (models.DATA / "eval" / "calibration.txt").read_text(encoding="utf-8")
    assert "".join(chr(i) for i in a[0].tolist()) in calib
    held = models.prompt_ids(50, batch=3, tokenizer=Tok(), seed=0)
    assert not torch.equal(a, held)  # another text
    with pytest.raises(ValueError, match="unknown text source"):
        models.prompt_ids(50, tokenizer=Tok(), source="secret")


@pytest.fixture(scope="module")
def embedded():
    # the embedded model is committed: its absence is a broken checkout, not missing hardware, so fail
    assert (MODELS_DIR / EMBEDDED).is_dir(), "data/models/stdlib-llama-16m is missing (python -m labkit train-tiny)"
    from labkit import DATA
    from labkit.core import models
    from labkit.core.quality import perplexity

    model, tok = models.load(EMBEDDED), models.load_tokenizer(EMBEDDED)
    text = (DATA / "eval" / "heldout.txt").read_text(encoding="utf-8")
    return model, tok, text, perplexity(model, tok, text, max_tokens=512)["perplexity"]


# Held-out perplexity may rise at most this much over fp32 (512 tokens): 1% for 8 bits (the target),
# 5% for 4 bits (measured here: under 1%).
PPL_BOUND = {"int8-weight-only": 0.01, "int8-dynamic": 0.01, "int8-dynamic-legacy": 0.02, "bnb-int8": 0.01,
             "bnb-nf4": 0.05, "int4-rtn": 0.05, "rtn": 0.05, "gptq": 0.05, "awq": 0.05}


@pytest.mark.parametrize("method", list(PPL_BOUND))
def test_embedded_model_keeps_perplexity(embedded, method):
    from labkit.core.quality import perplexity

    model, tok, text, base = embedded
    src = copy.deepcopy(model).to(torch.bfloat16) if method == "int4-rtn" else model
    calib = models.prompt_ids(128, batch=4, tokenizer=tok, source="calibration") if method in ("gptq", "awq") else None
    try:
        q = quant.quantize(src, method, calib=calib)
    except quant.QuantSkipped as e:
        pytest.skip(f"skipped here: {e}")
    ids = torch.tensor([tok(text[:2000])["input_ids"][:64]])
    with torch.no_grad():
        assert q(input_ids=ids).logits.shape == model(input_ids=ids).logits.shape
    if not q.labkit_quant.fake:
        assert q.labkit_quant.bytes < models.weight_bytes(model)
    ppl = perplexity(q, tok, text, max_tokens=512)["perplexity"]
    assert ppl / base - 1 < PPL_BOUND[method], (method, ppl, base)


def test_check_methods_names_the_valid_choices():
    from labkit.core.params import ParamError

    assert quant.check_methods(None) == list(quant.METHODS)
    assert quant.check_methods(["rtn"]) == ["rtn"]
    with pytest.raises(ParamError, match="choose from"):
        quant.check_methods(["int3-magic"])


def test_quantize_head_changes_only_the_head(small):
    model, x, _, ref = small
    q = quant.quantize_head(model)
    mods, qmods = dict(model.named_modules()), dict(q.named_modules())
    changed = [n for n, m in mods.items() if isinstance(m, nn.Linear)
               and type(qmods[n].weight) is not type(m.weight)]
    assert changed == ["lm_head"]
    assert models.weight_bytes(q.lm_head) < models.weight_bytes(model.lm_head) / 3  # int8 codes + row scales
    with torch.no_grad():
        assert _rel(q(input_ids=x).logits, ref) < TOL["int8-weight-only"]
    assert type(model.lm_head.weight) is nn.Parameter  # the input model is left as it was


def test_quant_still_offers_the_onednn_linear_it_swaps_in(small):
    """The module lives in techniques.quant_onednn; `quant.OneDNNInt8Linear` is the same class for its callers, and
    quantize("int8-dynamic-onednn") swaps it in for every linear but the skipped head."""
    _onednn_or_skip()
    assert quant.OneDNNInt8Linear is quant_onednn.OneDNNInt8Linear
    assert quant.quantize_tokens is quant_onednn.quantize_tokens
    model = small[0]
    q = quant.quantize(model, "int8-dynamic-onednn")
    swapped = [n for n, m in q.named_modules() if isinstance(m, quant_onednn.OneDNNInt8Linear)]
    assert swapped and "lm_head" not in swapped
    assert len(swapped) == sum(isinstance(m, nn.Linear) for n, m in model.named_modules() if n != "lm_head")
