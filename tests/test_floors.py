"""A floor is a floor: labkit.core.floors explains every measurement that beats its floor, and the record check
finds every stored fraction above 1.05 that carries no reason."""

import json

import pytest

from labkit.core import floors, records
from labkit.core.models import shape
from labkit.core.roofline import Card, Floor, decode_floor, prefill_floor

GFLOP = 1e9


def test_a_floor_that_holds_is_returned_as_is():
    r = [floors.Rate("fp32 matmul", 100 * GFLOP, 1e9)]  # 10 ms floor
    f = floors.of_floor(0.020, r)
    assert f.fraction == pytest.approx(0.5) and f.reason is None and f.fields("x") == {"x": pytest.approx(0.5)}
    assert floors.of_floor(0.0099, r).reason is None  # 1.01x: inside the 5% allowed


def test_a_beaten_floor_is_re_derived_from_the_fastest_rate_of_the_run_and_names_the_wrong_rate():
    r = [floors.Rate("fp32 matmul", 100 * GFLOP, 1e9), floors.Rate("memory bandwidth", 1e12, 1e6, "B/s")]
    f = floors.of_floor(0.005, r, fastest={"fp32 matmul": 250 * GFLOP})  # 2x faster than the 10 ms floor
    assert f.stated_fraction == pytest.approx(2.0) and f.wrong == ("fp32 matmul",)
    assert f.floor_s == pytest.approx(0.004) and f.fraction == pytest.approx(0.8)
    assert "fp32 matmul rate (100.0 GFLOP/s" in f.reason and "200.0 GFLOP/s at least" in f.reason
    assert "re-derived from the fastest rate timed in this run (fp32 matmul 250.0 GFLOP/s)" in f.reason
    assert f.fields("prefill_of_floor") == {"prefill_of_floor": pytest.approx(0.8),
                                            "prefill_of_floor_reason": f.reason}


def test_without_a_faster_rate_the_measurement_itself_is_the_floor():
    r = [floors.Rate("fp32 matmul", 100 * GFLOP, 1e9)]
    for fastest in (None, {"fp32 matmul": 150 * GFLOP}, {"bf16 matmul": 1e15}):  # too slow, or another rate
        f = floors.of_floor(0.005, r, fastest=fastest, note="note: notebook 01's profile is marked UNRELIABLE")
        assert f.fraction == 1.0 and f.floor_s == 0.005
        assert "taken as the measured time itself" in f.reason and "UNRELIABLE" in f.reason


def test_a_roofline_floor_gives_its_rates_and_the_binding_one_is_named():
    card = Card("test", 16, 10.0, {"fp32": 0.1}, measured=True)
    spec = shape("llama-2-7b")
    p = prefill_floor(spec, "fp32", card, 128, layers=1)
    names = [r.name for r in floors.rates_of(p, "fp32 matmul")]
    assert names == ["memory bandwidth", "fp32 matmul"]
    assert floors.of_floor(p.seconds / 3, p).wrong == ("fp32 matmul",)  # compute-bound: the matmul rate
    d = decode_floor(spec, "fp32", card, 128, layers=1)
    assert floors.of_floor(d.seconds / 3, d).wrong == ("memory bandwidth",)
    no_rate = Floor("prefill", 1e6, 1e9, 1e-4, None)  # a card without this dtype's rate: bandwidth only
    assert [r.name for r in floors.rates_of(no_rate)] == ["memory bandwidth"]


def test_a_sum_of_parts_blames_the_part_that_alone_exceeds_the_measurement_else_the_largest():
    pre = floors.Rate("int8 matmul", 100 * GFLOP, 2e9)  # 20 ms
    dec = floors.Rate("memory bandwidth", 10 * GFLOP, 1e8, "B/s")  # 10 ms
    assert floors.of_floor(0.015, [pre, dec], combine="sum").wrong == ("int8 matmul",)
    assert floors.of_floor(0.025, [pre, dec], combine="sum").wrong == ("int8 matmul",)  # neither alone: largest
    assert floors.of_floor(0.031, [pre, dec], combine="sum").reason is None


def test_bad_inputs_are_refused_with_the_reason():
    r = [floors.Rate("fp32 matmul", 1.0, 1.0)]
    with pytest.raises(ValueError, match="positive"):
        floors.of_floor(0.0, r)
    with pytest.raises(ValueError, match="combine"):
        floors.of_floor(1.0, r, combine="min")
    with pytest.raises(ValueError, match="at least one rate"):
        floors.of_floor(1.0, [])


def test_fastest_rates_keep_the_best_of_each_rate():
    best = floors.fastest_rates([("fp32 matmul", 1e9, 0.01), ("fp32 matmul", 1e9, 0.005), ("bw", 1e6, 0.0)])
    assert best == {"fp32 matmul": pytest.approx(2e11)}


def _write(root, experiment, metrics):
    return records.save(experiment, {"preset": "ci"}, metrics, root=root / "results")


def test_the_record_check_finds_every_unexplained_fraction_above_the_limit(tmp_path):
    ok = floors.of_floor(0.005, [floors.Rate("fp32 matmul", 100 * GFLOP, 1e9)])
    _write(tmp_path, "03_pruning", {"speed": [{"label": "dense", "prefill_of_floor": 0.8, "decode_of_floor": 0.9},
                                              {"label": "ffn", **ok.fields("prefill_of_floor")}]})
    _write(tmp_path, "04_parallelism", {"tp": [{"phase": "prefill", "fraction of floor": 1.04}]})
    _write(tmp_path, "07_case_study", {"projected": [{"stage": "baseline", "fraction_of_ceiling": 0.5,
                                                      "fraction_reason": None, "ceiling_note": "x"}]})
    assert floors.floor_problems(tmp_path) == []  # below the limit, or re-derived with its reason
    _write(tmp_path, "06_kernels_and_memory", {"prefill": [{"n": 256, "fraction_of_floor": 2.08}],
                                               "precision": [{"decode_fraction_of_floor": 1.6,
                                                              "decode_fraction_of_floor_reason": ""}],
                                               "profile": {"baseline": {"prefill_fraction": 1.36}}})
    found = floors.floor_problems(tmp_path)
    assert len(found) == 3, found
    assert any("prefill[0].fraction_of_floor = 2.080" in p for p in found)
    assert any("decode_fraction_of_floor = 1.600" in p for p in found)  # an empty reason is no reason
    assert any("baseline.prefill_fraction = 1.360" in p for p in found)


def test_the_record_check_ignores_flags_texts_and_reasons():
    rec = {"metrics": {"rows": [{"fraction_of_floor": True, "decode_fraction": "n/a",
                                 "fraction_of_floor_reason": "x", "split_fractions": {"TP=2": 0.5}}]}}
    assert floors.record_problems(rec) == []
    assert json.dumps(rec)  # plain JSON, as records are


def test_a_table_re_derives_a_beaten_floor_from_the_best_rate_any_of_its_rows_reached():
    rate = floors.Rate("fp32 matmul", 100 * GFLOP, 1e9)  # 10 ms floor, stated for every row
    rows = floors.of_floors([0.020, 0.004, 0.005], [[rate]] * 3)
    assert [r.reason is None for r in rows] == [True, False, False]
    assert rows[0].fraction == pytest.approx(0.5)  # the floor that held stays as stated
    assert rows[1].fraction == pytest.approx(1.0) and rows[2].fraction == pytest.approx(0.8)  # 250 GFLOP/s reached
    assert all(r.fraction <= floors.LIMIT for r in rows)


def test_reasons_are_listed_per_row_and_kept_out_of_the_shown_table():
    import pandas as pd

    df = pd.DataFrame([{"phase": "prefill", "fraction of floor": 1.0, "fraction of floor_reason": "why"},
                       {"phase": "decode", "fraction of floor": 0.5, "fraction of floor_reason": None}])
    assert floors.reasons(df, "phase") == ["prefill, fraction of floor: why"]
    assert list(floors.shown(df).columns) == ["phase", "fraction of floor"]
