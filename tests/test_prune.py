"""labkit.techniques.prune: every method reaches the sparsity it was asked for, leaves embeddings and head dense, and
still generates; structured pruning gives exactly the model you get by silencing the removed parts of the
original (so the right channels, heads and layers went), with a config that says so and survives
save_pretrained/from_pretrained; Wanda's defining property (it keeps the weights that multiply large
activations); the sparse kernels compute what the dense ones do; bad input fails naming the valid range.
The tests on the embedded model load it (a few seconds); no timing assertions."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from labkit.core import models
from labkit.techniques import prune

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest


@pytest.fixture(scope="module")
def small():
    """A 3-layer Llama with GQA (6 query heads in 2 groups of 3), seeded, and calibration/probe ids."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    calib = torch.randint(3, 128, (4, 24), generator=torch.Generator().manual_seed(1))
    x = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    return model, calib, x


def _logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


def _decoder_linears(model):
    return {n: m for n, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)}


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
@pytest.mark.parametrize("sparsity", [0.3, 0.4, 0.5, 0.6])
def test_unstructured_reaches_the_sparsity_exactly_and_leaves_the_rest(small, method, sparsity):
    model, calib, x = small
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = prune.prune(model, method, sparsity, calib=calib)
    for name, lin in _decoder_linears(p).items():
        w = lin.weight
        if method == "magnitude":  # whole matrix: round(s * numel) zeros, no more, no fewer
            assert int((w == 0).sum()) == round(sparsity * w.numel()), name
        else:  # each output row loses the same number
            assert ((w == 0).sum(1) == round(sparsity * w.shape[1])).all(), name
        kept = w != 0
        assert torch.equal(w[kept], dict(_decoder_linears(model))[name].weight[kept])  # survivors untouched
    assert torch.equal(p.lm_head.weight, model.lm_head.weight)
    assert torch.equal(p.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert p.labkit_prune.achieved == pytest.approx(sparsity, abs=0.01)
    assert p.labkit_prune.params_after == p.labkit_prune.params_before
    assert p.labkit_prune.nonzero_after < p.labkit_prune.params_before
    assert p.generate(input_ids=x[:1], max_new_tokens=4, do_sample=False).shape == (1, x.shape[1] + 4)
    for k, v in model.state_dict().items():  # the input model is left as it was
        assert torch.equal(v, before[k]), k


def test_magnitude_drops_the_smallest_weights(small):
    model, _, _ = small
    p = prune.prune(model, "magnitude", 0.5)
    for name, lin in _decoder_linears(p).items():
        orig = dict(_decoder_linears(model))[name].weight.abs()
        dropped, kept = orig[lin.weight == 0], orig[lin.weight != 0]
        assert dropped.max() <= kept.min(), name


@pytest.mark.parametrize("score", ["magnitude", "wanda"])
def test_two_of_four_keeps_two_in_every_group_of_four(small, score):
    model, calib, x = small
    p = prune.prune(model, "nm", calib=calib, score=score)
    for lin in _decoder_linears(p).values():
        groups = (lin.weight != 0).reshape(lin.weight.shape[0], -1, 4).sum(-1)
        assert (groups == 2).all()
    assert p.labkit_prune.achieved == 0.5
    assert p.generate(input_ids=x[:1], max_new_tokens=3, do_sample=False).shape[1] == x.shape[1] + 3


def test_wanda_keeps_the_weights_that_multiply_large_activations():
    """Its defining property: where a few input channels carry large activations (as in LLMs of several
    billion parameters), scoring |w| x ||x_j|| keeps their weights, and the layer's output error on those
    inputs is far below magnitude pruning's at the same sparsity."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=g)
    x = torch.randn(512, 128, generator=g)
    x[:, :4] *= 30  # four outlier channels
    mag, wan = w.clone(), w.clone()
    prune.prune_weight_(mag, "magnitude", 0.5)
    prune.prune_weight_(wan, "wanda", 0.5, x_norm=x.norm(dim=0))
    kept = {k: float((v[:, :4] != 0).float().mean()) for k, v in (("magnitude", mag), ("wanda", wan))}
    assert kept["wanda"] > 0.95 and kept["magnitude"] < 0.7, kept  # magnitude drops about half of them
    err = {k: float((x @ (w - v).T).norm()) for k, v in (("magnitude", mag), ("wanda", wan))}
    assert err["wanda"] < 0.6 * err["magnitude"], err


def test_ffn_pruning_equals_silencing_those_channels(small, tmp_path):
    model, calib, x = small
    p = prune.prune(model, "ffn", 0.25, calib=calib)
    assert p.config.intermediate_size == 72 and p.labkit_prune.achieved == 0.25
    ref = copy.deepcopy(model)
    for lp, lr in zip(p.model.layers, ref.model.layers, strict=True):
        assert lp.mlp.gate_proj.weight.shape == (72, 48) and lp.mlp.down_proj.weight.shape == (48, 72)
        kept = [int((lr.mlp.gate_proj.weight == row).all(1).nonzero()) for row in lp.mlp.gate_proj.weight]
        gone = sorted(set(range(96)) - set(kept))
        assert len(gone) == 24
        with torch.no_grad():
            lr.mlp.down_proj.weight[:, gone] = 0  # the original model with those channels silenced
    torch.testing.assert_close(_logits(p, x), _logits(ref, x), rtol=1e-4, atol=1e-5)
    _reloads(p, x, tmp_path)


def test_heads_pruning_removes_whole_gqa_groups(small, tmp_path):
    model, calib, x = small
    p = prune.prune(model, "heads", heads=3, calib=calib)  # one group: 3 query heads and their K/V head
    c = p.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (3, 1, 8)
    ref = copy.deepcopy(model)
    for lp, lr in zip(p.model.layers, ref.model.layers, strict=True):
        a = lp.self_attn
        assert a.q_proj.weight.shape == (24, 48) and a.k_proj.weight.shape == (8, 48)
        assert a.o_proj.weight.shape == (48, 24)
        # which group stayed: its K head is one of the original's two
        kept = [g for g in range(2) if torch.equal(lr.self_attn.k_proj.weight[g * 8:(g + 1) * 8], a.k_proj.weight)]
        assert len(kept) == 1
        with torch.no_grad():  # silence the other group's query heads in the original
            gone = 1 - kept[0]
            lr.self_attn.o_proj.weight[:, gone * 24:(gone + 1) * 24] = 0
    torch.testing.assert_close(_logits(p, x), _logits(ref, x), rtol=1e-4, atol=1e-5)
    assert prune.prune(model, "heads", 0.5, calib=calib).config.num_key_value_heads == 1
    _reloads(p, x, tmp_path)


def test_layer_pruning_drops_the_layers_that_change_their_input_least(small, tmp_path):
    model, calib, x = small
    sims = prune.layer_similarity(model, calib)
    p = prune.prune(model, "layers", 0.34, calib=calib)
    dropped = p.labkit_prune.config["dropped_layers"]
    assert dropped == [max(range(3), key=lambda i: sims[i])]
    assert p.config.num_hidden_layers == 2 and [la.self_attn.layer_idx for la in p.model.layers] == [0, 1]
    ref = copy.deepcopy(model)
    ref.model.layers = torch.nn.ModuleList([la for i, la in enumerate(ref.model.layers) if i not in dropped])
    ref.config.num_hidden_layers = 2
    for i, la in enumerate(ref.model.layers):
        la.self_attn.layer_idx = i
    torch.testing.assert_close(_logits(p, x), _logits(ref, x), rtol=1e-5, atol=1e-6)
    out = p.generate(input_ids=x[:1], max_new_tokens=5, do_sample=False)  # the KV cache follows the new layers
    assert out.shape[1] == x.shape[1] + 5
    _reloads(p, x, tmp_path)


def _reloads(p, x, tmp_path) -> None:
    p.save_pretrained(tmp_path / "pruned")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert back.config.to_dict()["intermediate_size"] == p.config.intermediate_size
    torch.testing.assert_close(_logits(back, x), _logits(p, x), rtol=0, atol=0)
    g1 = p.generate(input_ids=x[:1], max_new_tokens=4, do_sample=False)
    g2 = back.generate(input_ids=x[:1], max_new_tokens=4, do_sample=False)
    assert torch.equal(g1, g2)


def test_csr_kernel_computes_what_the_dense_one_does(small):
    model, _, x = small
    p = prune.prune(model, "magnitude", 0.6)
    s = prune.to_sparse(p, "csr")
    assert all(isinstance(m, prune.SparseLinear) for n, m in s.model.layers.named_modules()
               if n.endswith("_proj"))
    torch.testing.assert_close(_logits(s, x), _logits(p, x), rtol=1e-4, atol=1e-5)
    lin = s.model.layers[0].mlp.up_proj
    nnz = int((p.model.layers[0].mlp.up_proj.weight != 0).sum())
    assert nnz == round(0.4 * 96 * 48) and lin.nbytes() == nnz * (4 + 4) + (96 + 1) * 4  # values, columns, rows


def test_two_of_four_kernel_is_a_skip_with_the_reason_off_gpu(small):
    model, _, _ = small
    reason = prune.semi_structured_unsupported("cpu", torch.float16)
    assert "compute capability 8.0" in reason
    if not torch.cuda.is_available():
        with pytest.raises(prune.PruneSkipped, match="compute capability 8.0"):
            prune.to_sparse(prune.prune(model, "nm"), "2:4")


def test_bad_inputs_fail_naming_the_valid_range(small):
    model, calib, _ = small
    for bad in (-0.1, 1.0, 1.5, "half", True):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            prune.prune(model, "magnitude", bad)
    with pytest.raises(ValueError, match="unknown method"):
        prune.prune(model, "lottery", 0.5)
    with pytest.raises(ValueError, match="calibration"):
        prune.prune(model, "wanda", 0.5)
    with pytest.raises(ValueError, match="needs sparsity"):
        prune.prune(model, "magnitude")
    with pytest.raises(ValueError, match="not a multiple of M=5"):
        prune.prune(model, "nm", n=2, m=5)
    with pytest.raises(ValueError, match="removes exactly 0.5"):
        prune.prune(model, "nm", 0.3)
    with pytest.raises(ValueError, match=r"split a GQA group.*remove one of \[3\]"):
        prune.prune(model, "heads", heads=2, calib=calib)
    with pytest.raises(ValueError, match="remove all 2 GQA groups"):
        prune.prune(model, "heads", 0.9, calib=calib)
    with pytest.raises(ValueError, match=r"remove all 3 decoder layers.*sparsity in \[0, 0.833\)"):
        prune.prune(model, "layers", 0.9, calib=calib)
    with pytest.raises(ValueError, match="unknown sparse layout"):
        prune.to_sparse(model, "bsr")


# ---------------------------------------------------------------- the embedded model

@pytest.fixture(scope="module")
def embedded():
    tok = models.load_tokenizer(models.EMBEDDED)
    model = models.load(models.EMBEDDED)
    calib = models.prompt_ids(128, batch=4, tokenizer=tok, source="calibration")
    return model, tok, calib


@pytest.mark.parametrize("method,sparsity", [("magnitude", 0.5), ("wanda", 0.5), ("nm", None), ("ffn", 0.4),
                                             ("heads", 0.5), ("layers", 1 / 6)])
def test_each_method_on_the_embedded_model(embedded, method, sparsity, tmp_path):
    model, tok, calib = embedded
    p = prune.prune(model, method, sparsity, calib=calib)
    info = p.labkit_prune
    assert info.achieved == pytest.approx(0.5 if sparsity is None else sparsity, abs=1e-3)
    if method in prune.STRUCTURED:
        assert info.params_after < info.params_before
        _reloads(p, models.prompt_ids(16, batch=1, tokenizer=tok), tmp_path)
    ids = tok("def main(argv):\n    ", return_tensors="pt")["input_ids"]
    out = p.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 8
    assert tok.decode(out[0, ids.shape[1]:]).strip()  # it still writes something


def test_wanda_has_lower_layer_output_error_than_magnitude_on_the_embedded_model(embedded):
    """Wanda's objective on real activations: summed over every decoder linear, the output error on the
    calibration inputs is lower than magnitude pruning's at 50%."""
    model, _, calib = embedded
    err = {}
    for method in ("magnitude", "wanda"):
        p = prune.prune(model, method, 0.5, calib=calib)
        total = 0.0
        for layer_p, layer in zip(p.model.layers, model.model.layers, strict=True):
            names = [n for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)]
            norms = prune._input_norms(model, layer, calib, names)  # ||x_j|| on the dense model's inputs
            for n in names:
                dw = (layer.get_submodule(n).weight - layer_p.get_submodule(n).weight).detach()
                total += float((dw.pow(2) * norms[n].pow(2).unsqueeze(0)).sum())  # diagonal of X^T X
        err[method] = total
    assert err["wanda"] < err["magnitude"], err
