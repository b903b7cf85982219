"""The papermill runner: selection, parameter checks, and failures that name the notebook and cell."""

import nbformat
import pytest

from labkit.__main__ import main
from labkit.core.params import ParamError
from labkit.course import catalog
from labkit.course import runner as course


def _nb(path, code_cells, params='preset = "ci"\nn = 1'):
    cells = [nbformat.v4.new_code_cell(params)]
    cells[0].metadata["tags"] = ["parameters"]
    cells += [nbformat.v4.new_code_cell(c) for c in code_cells]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


@pytest.fixture
def fake_course(tmp_path, monkeypatch):
    d = tmp_path / "notebooks"
    d.mkdir()
    _nb(d / "00_ok.ipynb", ["from labkit.core.params import check_preset\ncheck_preset(preset)", "print(n * 2)"])
    _nb(d / "01_broken.ipynb", ["x = 1", "raise ValueError('deliberate failure')"])
    writes = ("from labkit.core import records\nfrom labkit.course import report\nimport matplotlib.pyplot as plt\n"
              "records.save('02_partial', {}, {'x': 1})\nreport.save_figure(plt.figure(), '02_partial')")
    _nb(d / "02_writes_then_fails.ipynb", [writes, "raise RuntimeError('after writing')"])
    _nb(d / "03_writes.ipynb", [writes.replace("02_partial", "03_done")], params='preset = "ci"')
    monkeypatch.setattr(catalog, "NOTEBOOKS_DIR", d)
    monkeypatch.setattr(catalog, "LESSONS", tuple(catalog.Lesson(p.stem[:2], p.stem, p.stem, (p.stem,))
                                                  for p in sorted(d.glob("*.ipynb"))))
    return d


def test_selection_validates_ids(fake_course):
    assert course.select(None) == ["00", "01", "02", "03"]
    assert course.select("1") == ["01"]
    with pytest.raises(course.CourseError, match="valid ids: 00, 01"):
        course.select("00,07")
    with pytest.raises(course.CourseError, match="names no notebook"):
        course.select(",")


def test_real_course_has_numbered_notebooks_with_parameters():
    nbs = course.notebooks()
    assert "00" in nbs
    for path in nbs.values():
        assert "preset" in course.notebook_parameters(path), path.name


def test_successful_run_lands_in_reports(fake_course, reports):
    r = course.run_notebook("00", "ci", {"n": 21}, reports, progress=False)
    assert r.error is None
    assert r.output == reports / "notebooks" / "00_ok.ipynb" and r.html.exists()
    out = nbformat.read(str(r.output), as_version=4)
    assert "42" in out.cells[-1].outputs[0]["text"]  # the parameter reached the notebook


def test_failure_names_notebook_and_cell_and_writes_nothing(fake_course, reports):
    run = course.run_course("ci", "01", reports=reports)
    assert not run.ok
    err = run.runs[0].error
    assert "01_broken.ipynb" in err and "cell" in err and "ValueError: deliberate failure" in err
    assert not (reports / "notebooks").exists()  # nothing half-written
    assert (reports / "index.html").exists() and "FAILED" in (reports / "index.html").read_text()


def test_unknown_parameter_and_preset_are_refused(fake_course, reports):
    with pytest.raises(ParamError, match="it takes: preset, n"):
        course.run_notebook("00", "ci", {"batch": 3}, reports)
    with pytest.raises(ParamError, match="choose one of"):
        course.run_notebook("00", "huge", None, reports)


def test_params_for_merges_per_notebook_overrides(fake_course):
    p = {"n": 3, "03": {"preset": "full"}}
    assert course.params_for("03", p) == {"preset": "full"}  # 03 does not take n: shared ones go where declared
    assert course.params_for("00", p) == {"n": 3}
    assert course.params_for("00", {"n": 3, "00": {"n": 4}}) == {"n": 4}


def test_a_shared_parameter_no_notebook_takes_is_refused(fake_course, reports):
    with pytest.raises(ParamError, match=r"no selected notebook takes parameter\(s\) \['nn'\]"):
        course.run_course("ci", "00", {"nn": 3}, reports)


def test_cli_exit_codes(fake_course, reports, capsys):
    assert main(["course", "--only", "09", "--reports", str(reports)]) == 2
    assert "valid ids" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["course", "--preset", "huge"])
    assert e.value.code == 2
    assert main(["course", "--only", "01", "--reports", str(reports)]) == 1
    assert main(["course", "--only", "00", "-p", "n=5", "--reports", str(reports)]) == 0
    assert "1 notebook(s) ran, 0 failed" in capsys.readouterr().out


def test_a_failed_notebook_leaves_its_records_and_figures_with_its_executed_copy(fake_course, reports):
    run = course.run_course("ci", "02,03", reports=reports, stop_on_error=False)
    failed, ok = run.runs
    assert failed.error and "after writing" in failed.error and ok.error is None
    assert [p.parent.name for p in (reports / "results").glob("*/*.json")] == ["03_done"]
    assert [p.name for p in (reports / "figures").glob("*.png")] == ["03_done.png"]
    kept = failed.failed_copy.parent
    assert list(kept.glob("staged/results/02_partial/*.json")) and (kept / "staged/figures/02_partial.png").exists()
    assert "LABKIT_STAGING" not in __import__("os").environ  # the runner's own environment is restored


def test_every_parameter_is_checked_before_the_first_notebook_runs(fake_course, reports, capsys, tmp_path):
    with pytest.raises(ParamError, match="notebook 01 .* has no parameter"):
        course.run_course("ci", "00,01", {"n": 2, "01": {"m": 3}}, reports=reports)
    assert not (reports / "notebooks").exists()  # notebook 00 did not run first
    bad = tmp_path / "bad.json"
    bad.write_text('{"n": 2,}')
    assert main(["course", "--params", str(bad), "--reports", str(reports)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["course", "--only", ",", "--reports", str(reports)]) == 2
    assert "names no notebook" in capsys.readouterr().err


def test_output_problems_finds_empty_figures_cut_reasons_and_warnings(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("lesson.show(fig, 'x')"),
        nbformat.v4.new_code_cell("print(table)"),
        nbformat.v4.new_code_cell("import warnings"),
        nbformat.v4.new_code_cell("lesson.show(fig, 'y')")])
    cut = "gptqmodel  skipped: GPTQModel is n..."
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text=cut)]
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stderr", text="UserWarning: something odd\n")]
    nb.cells[3].outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBOR"})]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, str(path))
    problems = course.output_problems(path)
    assert problems == ["cell 0 draws a figure but shows none", "cell 1 cuts a skip reason: gptqmodel  skipped: "
                        "GPTQModel is n...", "cell 2 leaks a warning: UserWarning: something odd"]


def test_the_catalog_is_consistent_with_itself_and_the_notebooks_folder():
    assert catalog.problems() == []
    assert catalog.unlisted() == [], "a notebook in notebooks/ that labkit/course/catalog.py does not list"
    assert all(les.path.exists() for les in catalog.LESSONS)
    assert course.select(None) == [les.id for les in catalog.LESSONS]


def test_every_notebook_starts_and_saves_under_its_catalog_names():
    """The literal names in `lesson.start("...")` and `run.save("...")` are the catalog's (Run.save refuses others
    when the notebook runs; this finds them without running it)."""
    import re

    for les in catalog.LESSONS:
        code = "\n".join(c.source for c in nbformat.read(str(les.path), as_version=4).cells if c.cell_type == "code")
        assert re.findall(r'lesson\.start\("([^"]+)"', code) == [les.notebook]
        saved = re.findall(r'run\.save\("([^"]+)"', code)
        assert set(saved) <= set(les.records), (les.notebook, saved)


def test_notebook_01s_record_is_the_name_the_planner_reads_back():
    from labkit.core.planner import PROFILE_EXPERIMENT

    assert catalog.lesson("01").records == (PROFILE_EXPERIMENT,) == (catalog.HARDWARE_PROFILE,)


def test_catalog_lookup_and_its_checks():
    assert catalog.lesson("2") is catalog.lesson("02") is catalog.lesson("02_quantization")
    assert catalog.find("42") is None
    with pytest.raises(ValueError, match="no lesson '42'.*00_methodology"):
        catalog.lesson("42")
    a = catalog.Lesson("01", "A", "01_a", ("shared",))
    bad = (a, catalog.Lesson("00", "B", "b", ("shared",)), catalog.Lesson("02", "C", "02_c", ()))
    assert catalog.problems(bad) == ["lesson ids must be unique and in teaching order, got ['01', '00', '02']",
                                     "lesson 00: notebook 'b' must start with 00_",
                                     "record 'shared' is written by lessons 01 and 00", "lesson 02 writes no record"]

