import json
import math

import pytest

from labkit.core import records


def test_round_trip_and_dataframe(reports):
    fp = {"cpu": "test cpu", "versions": {"torch": "x"}}
    rec = records.make_record("demo", {"model": "m", "layers": 2}, {"ttft_ms": 12.5, "nan": math.nan},
                              fingerprint=fp)
    path = records.write_record(rec)
    assert path.parent == reports / "results" / "demo"
    saved = json.loads(path.read_text())
    assert saved["metrics"] == {"ttft_ms": 12.5, "nan": None}  # NaN is not valid JSON: stored as null
    assert saved["versions"] == {"torch": "x"} and saved["schema"] == records.SCHEMA
    assert not list(path.parent.glob(".tmp-*"))  # atomic write left no temp file
    rec2 = records.save("demo", {"model": "m", "layers": 4}, {"ttft_ms": 7.0})
    assert records.latest("demo")["config"]["layers"] in (2, 4)
    df = records.load_records(experiment="demo")
    assert len(df) == 2
    assert set(df["config.layers"]) == {2, 4}
    assert sorted(df["metrics.ttft_ms"]) == [7.0, 12.5]
    assert rec2["fingerprint"]["logical_cores"] >= 1  # save() takes the real fingerprint


def test_bad_records_are_refused(reports):
    with pytest.raises(ValueError):
        records.write_record({"experiment": "x"})
    with pytest.raises(ValueError):
        records.make_record("", {}, {}, fingerprint={})


def test_no_records_gives_empty_frame(reports):
    assert records.load_records().empty
    assert records.latest("nothing") is None


def test_the_newer_of_two_records_written_in_the_same_second_wins(reports):
    fp = {"cpu": "test", "versions": {}}
    for i in range(12):  # a dozen in well under a second: each must be the latest when written
        records.write_record(records.make_record("race", {"i": i}, {}, fingerprint=fp))
        assert records.latest("race")["config"]["i"] == i
    times = [r["time"] for r in records.read_records(experiment="race")]
    assert len(set(t[:19] for t in times)) < len(times)  # several shared a second, so the test means something


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "x" / "f.txt"
    records.atomic_write(target, "old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        records.atomic_write(target, write=broken)
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]
    records.atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
