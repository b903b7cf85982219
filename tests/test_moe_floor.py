"""Notebook 01's MoE demonstration: the floors read a mixture-of-experts model's routed experts only, and the
measurement sets the dense/MoE decode ratio against the floors' ratio."""

import pytest

from labkit.core import models, roofline
from labkit.lessons import moe_floor

TINY_MOE = models.ShapeSpec("tiny-moe", "qwen3_moe", 64, 128, 2, 4, 2, 1000, 256, 10000.0, head_size=16,
                            qk_norm=True, num_experts=8, experts_per_token=2, moe_intermediate_size=32)


def test_the_pair_has_the_same_total_size_and_a_small_vocabulary():
    moe, dense = moe_floor.shapes()
    assert moe.vocab_size == dense.vocab_size == moe_floor.SMALL_VOCAB
    assert moe.params() == pytest.approx(dense.params(), rel=0.01)  # the router's few parameters aside
    assert dense.params() / moe.active_params() > 8  # Qwen3-30B-A3B: 8 of 128 experts per token
    with pytest.raises(models.ModelError, match="not a mixture-of-experts"):
        moe_floor.shapes("llama-2-7b")


def test_moe_and_dense_decode_side_by_side_against_their_floors(monkeypatch):
    monkeypatch.setitem(models.SHAPES, "tiny-moe", TINY_MOE)
    card = roofline.Card("test", 16.0, 20.0, {"fp32": 0.1}, "test")
    res = moe_floor.measure(card, "tiny-moe", layers=1, tokens=3, rounds=2, progress=False)
    moe, dense = res["rows"]
    assert moe["model"] == "MoE" and dense["model"] == "dense, same total"
    assert moe["active_params_M"] < moe["params_M"] and dense["active_params_M"] == dense["params_M"]
    want = (roofline.decode_floor(moe_floor.shapes("tiny-moe")[1], "fp32", card, 17, layers=1).seconds
            / roofline.decode_floor(moe_floor.shapes("tiny-moe")[0], "fp32", card, 17, layers=1).seconds)
    assert res["floor_ratio"] == pytest.approx(want) and res["floor_ratio"] > 1
    assert len(res["ratio"].values) == 2 and all(v > 0 for v in res["ratio"].values)
    assert all(r["decode_ms_per_token"] > 0 and 0 < r["fraction_of_floor"] <= 1.05 for r in res["rows"])
    text = " ".join(moe_floor.lines(res))
    assert f"{res['floor_ratio']:.1f}x the bytes" in text and f"{res['ratio'].value:.1f}x faster" in text
    assert "only the 2 routed experts of 8" in text


def test_the_verdict_follows_the_share_of_the_floor_ratio():
    from labkit.core.bench import Ratio

    base = {"layers": 1, "dtype": "fp32", "experts": (8, 128), "floor_ratio": 10.0}
    assert "within 1.5x" in " ".join(moe_floor.lines({**base, "ratio": Ratio([8.0, 9.0, 8.5])}))
    assert "further than 1.5x" in " ".join(moe_floor.lines({**base, "ratio": Ratio([4.0, 4.5, 4.2])}))
