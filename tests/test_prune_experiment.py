"""labkit.lessons.pruning on tiny models and synthetic tables: the roofline sees the pruned dimensions
exactly, the speed table pairs every variant with its prediction (unstructured predicts no gain), the sweep's
crossover is the sparsity from which the sparse kernel keeps winning, the targets follow the numbers, and bad
parameters fail naming what is valid. No timing assertions."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from labkit.core.params import ParamError
from labkit.core.roofline import Card
from labkit.lessons import pruning as px

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest


HW = Card("test card", 16, 20.0, {"fp32": 0.2, "bf16": 0.6, "fp16": None, "int8": None, "int4": None})


def test_variants_name_and_classify_every_cut():
    plan = px.variants([0.3, 0.5], {"ffn": 0.4, "ffn+heads": [0.3, 0.5]})
    labels = [v.label for v in plan]
    assert labels == ["magnitude 30%", "magnitude 50%", "wanda 30%", "wanda 50%", "2:4 (magnitude)",
                      "2:4 (wanda)", "ffn 40%", "ffn 30% + heads 50%"]
    assert [v.kind for v in plan] == ["unstructured"] * 4 + ["semi-structured"] * 2 + ["structured"] * 2
    assert plan[-1].steps == [("ffn", 0.3, {}), ("heads", 0.5, {})]


def test_shape_of_a_pruned_model_counts_its_real_parameters(tiny_llama):
    calib = torch.randint(3, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    v = px.Variant("both", [("ffn", 0.25, {}), ("heads", None, {"heads": 2})])
    p = v.apply(tiny_llama, calib)
    assert [i.method for i in p.labkit_prune_steps] == ["ffn", "heads"]
    spec = px.shape_of(p)
    layer = sum(t.numel() for t in p.model.layers[0].parameters())
    assert spec.layer_params() == layer and spec.head_dim == 16
    assert spec.params() == sum(t.numel() for t in p.parameters())
    assert px.shape_of(tiny_llama).layer_params() == sum(t.numel() for t in tiny_llama.model.layers[0].parameters())


def test_benchmark_pairs_each_measurement_with_its_prediction(tiny_llama):
    calib = torch.randint(3, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    plan = [px.Variant.of("magnitude", 0.5), px.Variant.of("ffn", 0.5), px.Variant.of("nm")]
    table, ratios = px.benchmark(tiny_llama, plan, hw=HW, calib=calib, prompt_len=8, new_tokens=3, repeats=1,
                                 full_layers=8, progress=False)
    rows = table.set_index("label")
    assert rows.loc["magnitude 50%", "predicted_decode_x"] == pytest.approx(1.0)  # zeros are still read
    assert rows.loc["ffn 50%", "predicted_decode_x"] > 1.0
    assert rows.loc["ffn 50%", "full_depth_predicted_decode_x"] > rows.loc["ffn 50%", "predicted_decode_x"]
    assert rows.loc["ffn 50%", "decode_MiB_per_token"] < rows.loc["dense", "decode_MiB_per_token"]
    if not torch.cuda.is_available():
        assert rows.loc["2:4 (magnitude) + 2:4 kernel", "status"].startswith("skipped: 2:4 semi-structured")
    assert set(ratios) == {"dense", "magnitude 50%", "ffn 50%"}
    assert ratios["ffn 50%"]["decode"].values and "x" in ratios["ffn 50%"]["decode"].words()
    assert tiny_llama.model.embed_tokens.weight.shape == (256, 64)  # the dense model is left whole


def test_sparse_sweep_measures_both_kernels_and_predicts_from_bytes():
    sweep = px.sparse_sweep(64, 128, [0.5, 0.9], hw=HW, tokens=(1, 8), rounds=1, working_set_mib=0.1,
                            progress=False)
    assert len(sweep) == 4 and (sweep["dense_ms"] > 0).all() and (sweep["csr_ms"] > 0).all()
    decode = sweep[sweep["tokens"] == 1].set_index("sparsity")
    assert decode.loc[0.5, "copies"] == 4  # 0.1 MiB of 32 KiB matrices
    assert decode.loc[0.5, "predicted_csr_x"] == pytest.approx(1.0, abs=0.05)  # 8 bytes per nonzero vs 4 per weight
    assert decode.loc[0.9, "predicted_csr_x"] > 4


def test_crossover_is_where_the_sparse_kernel_keeps_winning():
    sweep = pd.DataFrame({"tokens": [1] * 5, "sparsity": [0.5, 0.7, 0.8, 0.9, 0.99],
                          "csr_faster": [False, True, False, True, True],
                          "predicted_csr_x": [1.0, 1.7, 2.5, 5.0, 50.0]})
    assert px.crossover(sweep, 1) == 0.9  # the win at 70% is not kept at 80%
    assert px.crossover(sweep, 1, "predicted") == 0.7
    assert px.crossover(sweep.assign(csr_faster=False), 1) is None


def test_outlier_channels_are_where_wanda_differs_from_magnitude():
    demo = px.outlier_demo(out_features=64, in_features=128, tokens=256).set_index("inputs")
    even, outl = demo.iloc[0], demo.iloc[1]
    assert even["wanda output error"] == pytest.approx(even["magnitude output error"], rel=0.15)
    assert outl["wanda output error"] < 0.6 * outl["magnitude output error"]


def _tables():
    quality = pd.DataFrame([
        {"label": "dense", "kind": "dense", "status": "ok", "perplexity": 10.0, "ppl_change": 0.0},
        {"label": "magnitude 40%", "kind": "unstructured", "status": "ok", "perplexity": 10.1, "ppl_change": 0.01,
         "token_agreement": 0.96},
        {"label": "magnitude 50%", "kind": "unstructured", "status": "ok", "perplexity": 10.4, "ppl_change": 0.04},
        {"label": "wanda 50%", "kind": "unstructured", "status": "ok", "perplexity": 10.3, "ppl_change": 0.03},
        {"label": "ffn 40%", "kind": "structured", "status": "ok", "perplexity": 11.0, "ppl_change": 0.1,
         "token_agreement": 0.9}])
    speed = pd.DataFrame([
        {"label": "dense", "kind": "dense", "status": "ok", "decode_x": 1.0, "prefill_x": 1.0},
        {"label": "magnitude 40%", "kind": "unstructured", "status": "ok", "decode_x": 1.03, "prefill_x": 0.97,
         "predicted_decode_x": 1.0, "decode_of_prediction": 1.03},
        {"label": "ffn 40%", "kind": "structured", "status": "ok", "decode_x": 1.2, "prefill_x": 1.4,
         "predicted_decode_x": 1.25, "decode_of_prediction": 0.96}])
    return quality, speed


def test_targets_follow_the_measured_numbers():
    quality, speed = _tables()
    rows = {r["target"].split(":")[0]: r for r in px.targets(quality, speed, {"ffn 40%": 10.4},
                                                            structured_label="ffn 40%")}
    assert rows["unstructured pruning on dense kernels"]["met"]
    assert rows["ffn 40%"]["met"] and "96% of it" in rows["ffn 40%"]["measured"]
    assert rows["recovery of ffn 40%"]["met"] and "60% of the loss won back" in rows["recovery of ffn 40%"]["measured"]
    assert rows["Wanda beats magnitude at 50% unstructured on perplexity"]["met"]
    slow = speed.assign(decode_of_prediction=[1.0, 1.0, 0.5], decode_x=[1.0, 1.15, 0.6])
    rows = {r["target"].split(":")[0]: r for r in px.targets(quality, slow, {"ffn 40%": 10.9},
                                                            structured_label="ffn 40%")}
    assert not rows["unstructured pruning on dense kernels"]["met"] and not rows["ffn 40%"]["met"]
    assert not rows["recovery of ffn 40%"]["met"]


def test_summary_keeps_every_variant_once_with_recovery(tiny_llama):
    quality, speed = _tables()
    table = px.summary(quality, speed, {"ffn 40%": 10.4})
    assert table["label"].tolist() == quality["label"].tolist()
    ffn = table.set_index("label").loc["ffn 40%"]
    assert ffn["decode_x"] == 1.2 and ffn["ppl_change_after_recovery"] == pytest.approx(0.04)


def test_bad_parameters_fail_naming_the_valid_range():
    good = ([0.3], {"ffn": 0.4}, [0.5])
    px.check_parameters(*good)
    with pytest.raises(ParamError, match=r"sparsities.*\[0, 1\)"):
        px.check_parameters([0.3, 1.2], {"ffn": 0.4}, [0.5])
    with pytest.raises(ParamError, match=r"unknown cut 'rows'.*\['ffn', 'heads', 'layers'\]"):
        px.check_parameters([0.3], {"rows": 0.4}, [0.5])
    with pytest.raises(ParamError, match="takes a pair"):
        px.check_parameters([0.3], {"ffn+heads": 0.4}, [0.5])
    with pytest.raises(ParamError, match="sweep_sparsities"):
        px.check_parameters([0.3], {"ffn": 0.4}, [])


def test_a_copy_that_would_not_fit_is_a_skipped_row(tiny_llama, monkeypatch):
    from labkit.core import hardware

    monkeypatch.setattr(hardware, "memory_bytes", lambda: {"total": 2**30, "available": 2**20})
    calib = torch.randint(3, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    table, ratios = px.benchmark(tiny_llama, [px.Variant.of("ffn", 0.5)], hw=HW, calib=calib, prompt_len=8,
                                 new_tokens=2, repeats=1, progress=False)
    row = table.set_index("label").loc["ffn 50%"]
    assert row["status"].startswith("skipped: not enough memory") and "GiB available now" in row["status"]
    assert set(ratios) == {"dense"}


def test_settings_fill_the_preset_keep_what_was_given_and_check_it(monkeypatch):
    from labkit.core import planner

    monkeypatch.setattr(planner, "machine_card", lambda device: (HW, f"test card for {device}"))
    cuts = {"sparsities": [0.3], "structured": {"ffn": 0.4}}
    ci, full = px.settings("ci", device="cpu", **cuts), px.settings("full", device="cpu", **cuts)
    assert (ci.device, ci.hw, ci.hw_source) == ("cpu", HW, "test card for cpu")
    assert ci.prompt_len < full.prompt_len and ci.recovery_steps < full.recovery_steps and ci.n_calib < full.n_calib
    assert set(ci.sweep_sparsities) < set(full.sweep_sparsities)
    assert ci.ppl_tokens is not None and full.ppl_tokens is None  # full: every held-out token
    given = px.settings("ci", device="cpu", layers=3, prompt_len=7, sweep_sparsities=[0.9], repeats=4, **cuts)
    assert (given.layers, given.prompt_len, given.sweep_sparsities, given.repeats) == (3, 7, [0.9], 4)
    assert HW.name in ci.card_line() and f"{HW.bandwidth_gbps:.1f} GB/s" in ci.card_line()
    for bad, what in (({"layers": 1}, "layers"), ({"seed": "0"}, "seed"), ({"new_tokens": 1}, "new_tokens"),
                      ({"sparsities": [1.5]}, "sparsities"), ({"structured": {"rows": 0.2}}, "rows")):
        with pytest.raises(ParamError, match=what):
            px.settings("ci", device="cpu", **{**cuts, **bad})
