from labkit.core import records
from labkit.course import lesson


def test_a_lesson_records_its_preset_and_load_and_says_how_long_it_took(reports, capsys):
    run = lesson.start("99_demo", "ci", describe=False)
    rec = run.save("99_demo", {"n": 1}, {"x": 2.0})
    assert rec["config"] == {"preset": "ci", "n": 1} and set(rec["metrics"]["load"]) >= {
        "loadavg_before", "loadavg_after", "others_cpu_share", "busy"}
    assert records.latest("99_demo")["metrics"]["x"] == 2.0
    out = run.finish()
    assert out["seconds"] >= 0
    text = capsys.readouterr().out
    assert "stored as the record 99_demo" in text and "99_demo took " in text and "(preset ci)" in text


def test_show_saves_the_figure_for_the_index(reports):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2])
    path = lesson.show(fig, "99_demo_plot")
    assert path.exists() and path.read_bytes()[:4] == b"\x89PNG"
    assert not plt.get_fignums()  # closed, so Jupyter does not draw it a second time
