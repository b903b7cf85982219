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
    out = run.finish()
    assert out["seconds"] >= 0
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
    path = lesson.show(fig, "99_demo_plot")
    assert path.exists() and path.read_bytes()[:4] == b"\x89PNG"
    assert not plt.get_fignums()  # closed, so Jupyter does not draw it a second time
