import pytest

from labkit.core import records
from labkit.course import catalog, lesson


def test_a_lesson_records_its_preset_and_load_and_says_how_long_it_took(reports, capsys):
    first = catalog.LESSONS[0]
    run = lesson.start(first.notebook, "ci", describe=False)
    rec = run.save(first.record, {"n": 1}, {"x": 2.0})
    assert rec["config"] == {"preset": "ci", "n": 1} and set(rec["metrics"]["load"]) >= {
        "loadavg_before", "loadavg_after", "others_cpu_share", "busy"}
    assert records.latest(first.record)["metrics"]["x"] == 2.0
    assert run.finish() is None  # a notebook's last cell shows the sentence, not a dict
    assert run.finished["seconds"] >= 0 and "busy" in run.finished
    text = capsys.readouterr().out
    assert f"stored as the record {first.record}" in text and f"{first.notebook} took " in text
    assert "(preset ci)" in text


def test_a_lesson_and_its_records_must_be_in_the_catalog(reports):
    """A name the catalog does not list would be written and never read by the index or the ledger: refused."""
    with pytest.raises(ValueError, match="no lesson '99_demo'.*00_methodology"):
        lesson.start("99_demo", "ci", describe=False)
    with pytest.raises(ValueError, match="no lesson '03'"):  # the notebook's name, not its id
        lesson.start("03", "ci", describe=False)
    pruning = catalog.lesson("03")
    run = lesson.start(pruning.notebook, "ci", describe=False)
    for name in pruning.records:
        assert run.save(name, {}, {"x": 1.0})["experiment"] == name
    with pytest.raises(ValueError, match=r"writes the record\(s\) 03_pruning, 03_pruning/verdicts .*'03_baseline'"):
        run.save("03_baseline", {}, {"x": 1.0})
    assert records.read_records(experiment="03_baseline") == []


def test_show_saves_the_figure_for_the_index(reports):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2])
    assert lesson.show(fig, "99_demo_plot") is None  # a cell ending in it shows the figure, not PosixPath('...')
    path = lesson.figure_path("99_demo_plot")
    assert path.exists() and path.read_bytes()[:4] == b"\x89PNG"
    assert fig.number not in plt.get_fignums()  # closed, so Jupyter does not draw it a second time


def _wide(n_rows: int = 3):
    import pandas as pd

    row = {"label": "dense", "status": "ok", "bytes": 62940720, "ttft_idle_ms": 30470.2, "ppl_delta_pct": 1.5,
           "throughput_x_prev": 1.25, "tiny_s": 0.0000123, "peak_MiB": 26.3}
    row.update({f"extra_{i}_ms": float(i) for i in range(7)})
    rows = [dict(row, label=f"v{i}") for i in range(n_rows)]
    for r in rows[1:]:
        r["status"] = "skipped: GPTQModel is not installed (pip install labkit[gptq]) on this machine"
    return pd.DataFrame(rows)


def test_a_wide_table_is_cut_into_parts_at_notebook_width_in_words_and_units():
    from labkit.core import tables

    df = _wide()
    cut = tables.views(df, keys="label")
    assert len(df.columns) > tables.WIDTH and all(n <= tables.WIDTH for n in cut.columns())
    assert len(cut.parts) > 1 and all(list(p.index) == ["v0", "v1", "v2"] for p in cut.parts)  # keys in each part
    shown = {c for p in cut.parts for c in p.columns} | {cut.parts[0].index.name}
    assert len(shown) == len(df.columns)  # every column shows once, key included
    assert {"perplexity change (%)", "TTFT idle (ms)", "throughput vs previous (x)", "peak (MiB)", "size"} <= shown
    text = "\n".join(p.to_string() for p in cut.parts)
    assert "60.0 MiB" in text and "62940720" not in text and "30,470" in text and "0.000012" in text
    assert "e-0" not in text and "e+0" not in text
    status = cut.parts[0]["status"].tolist()
    assert status == ["ok", "skipped [1]", "skipped [1]"]  # one short mark for one reason
    assert cut.notes == ["[1] " + df["status"][1]]
    assert df["bytes"][0] == 62940720  # the measured frame is left as it was


def test_a_one_row_wide_table_is_laid_on_its_side_and_table_prints_the_reasons(capsys):
    from labkit.core import tables

    cut = tables.views(_wide(1).drop(columns="status"))
    assert len(cut.parts) == 1 and cut.columns() == [2] and len(cut.parts[0]) == 14
    assert cut.parts[0].loc["size", "value"] == "60.0 MiB"
    lesson.table(_wide(), keys="label", width=5)
    out = capsys.readouterr().out
    assert "[1] skipped: GPTQModel is not installed" in out and "62940720" not in out
    with pytest.raises(KeyError, match="'nope'"):
        tables.views(_wide(), keys="nope")


def test_record_keys_read_as_words_with_units():
    from labkit.core.tables import words

    assert words("ppl_delta_pct") == "perplexity change (%)"
    assert words("ttft_idle_ms") == "TTFT idle (ms)" and words("decode_x") == "decode (x)"
    assert words("decode floor ms") == "decode floor ms" and words("MiB") == "MiB"  # already words
    assert "_" not in words("ttft_idle_ratio") and "ratio" not in words("ttft_idle_ratio")
