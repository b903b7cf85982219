"""The papermill runner: selection, parameter checks, and failures that name the notebook and cell."""

import nbformat
import pytest

from labkit.__main__ import main
from labkit.core import records
from labkit.core.params import ParamError
from labkit.course import catalog
from labkit.course import plan as course_plan
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
    assert [p.parent.name for p in (reports / "results").glob("*/*.json")] == ["03_done", "course_times"]
    (timed,) = records.read_records(reports / "results", "course_times")  # the failed one's time is not stored
    assert timed["config"]["lesson"] == "03"
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


def test_output_problems_finds_reprs_raw_dicts_e_notation_and_raw_byte_counts(tmp_path):
    """What a learner saw under figures and tables: a path's repr, a dict, an object's repr, 3.047e+04, 62940720.
    Words, separated numbers, dates in paths and a stderr log are not flagged."""
    shown = ["PosixPath('/tmp/labkit-1/figures/03_x.png')", "{'read_gbps': 1.2, 'write_gbps': 0.8}",
             "<labkit.core.bench.Rounds object at 0x7f3a2c>", "ttft_ms    3.047e+04", "bytes    62940720"]
    fine = ["weights: 60.0 MiB, 62,940,720 bytes read in 1.2 s", "saved /r/results/04_x/20240101T120000123.json",
            "<Figure size 800x320 with 1 Axes>", "<IPython.core.display.Markdown object>"]
    cells = [nbformat.v4.new_code_cell(f"x{i}") for i in range(len(shown) + len(fine) + 1)]
    for c, text in zip(cells[:-1], shown + fine, strict=True):
        c.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": text}, execution_count=1)]
    cells[-1].outputs = [nbformat.v4.new_output("stream", name="stderr", text="step 1.5e-05 s {'a': 1}\n")]
    nb = nbformat.v4.new_notebook(cells=cells)
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, str(path))
    problems = course.output_problems(path)
    assert problems == [f"cell 0 shows a path's repr: {shown[0]}", f"cell 1 shows a raw dict: {shown[1]}",
                        f"cell 2 shows an object's repr: {shown[2]}",
                        f"cell 3 shows a number in e-notation: {shown[3]}", f"cell 4 shows a raw count: {shown[4]}"]


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



# ---------------------------------------------------------------- the plan: expected time per lesson on this machine


def _fp(cpu="Test CPU 9000", avx512=True, cores=2):
    return {"cpu": cpu, "usable_cores": cores, "gpus": [], "versions": {},
            "isa": {"avx2": True, "avx512f": avx512, "avx512_vnni": avx512, "avx512_bf16": False, "amx_bf16": False}}


def _profile(reports, fp, fp32, bw):
    metrics = {"device": "cpu", "probes": {"cpu": {"matmul_gflops": {"fp32": fp32}, "bandwidth_gbps": {"best": bw}}}}
    rec = records.make_record(catalog.HARDWARE_PROFILE, {}, metrics, fingerprint=fp)
    records.write_record(rec, reports / "results")


def _time(reports, fp, lesson_id, seconds, params=None, preset="ci"):
    m = course_plan.machine(fp)
    config = {"lesson": lesson_id, "preset": preset, "params": params or {}, "machine_key": course_plan.machine_key(m)}
    records.write_record(records.make_record(course_plan.TIMES, config, {"seconds": seconds}, fingerprint=fp),
                         reports / "results")


REF = {"machine": "the reference box", "preset": "ci", "source": "test", "fp32_gflops": 100.0, "bandwidth_gbps": 20.0}


def test_the_plan_names_the_machine_kind_and_the_features_that_decide_speed():
    m = course_plan.machine(_fp())
    text = course_plan.describe_machine(m)
    assert "Test CPU 9000" in text and "AVX-512 yes" in text and "VNNI yes" in text and "AMX no" in text
    assert "2 usable cores" in text and "GPU: none" in text
    assert course_plan.machine_key(m) != course_plan.machine_key(course_plan.machine(_fp(avx512=False)))
    assert course_plan.machine_key(m) != course_plan.machine_key(course_plan.machine(_fp(cores=4)))


def test_the_estimate_is_the_last_run_on_this_machine_with_these_parameters(reports, monkeypatch):
    monkeypatch.setattr(catalog, "REFERENCE", REF)
    here, other = _fp(), _fp(cpu="Other CPU")
    _time(reports, here, "03", 500.0)  # older than the last 3: not counted
    _time(reports, here, "03", 50.0)
    _time(reports, here, "03", 90.0)
    _time(reports, here, "03", 70.0)  # the median of the last 3 counts
    _time(reports, here, "03", 900.0, params={"layers": 4})  # other parameters: another lesson's time
    _time(reports, other, "03", 10.0)  # another machine kind says nothing about this one
    plan = course_plan.make_plan(["03", "04"], "ci", {}, reports, fp=here)
    e = plan.estimates["03"]
    assert (e.seconds, e.basis) == (70.0, "measured here") and "median of its last 3 runs on this machine" in e.source
    assert "(50-90 s, the last " in e.source
    assert plan.estimates["04"].basis == "reference"  # never run here, no profile: the reference as it is
    assert plan.estimates["04"].seconds == catalog.lesson("04").reference_s
    assert "no notebook-01 profile" in plan.estimates["04"].source
    assert plan.total_s == 70.0 + catalog.lesson("04").reference_s
    assert course_plan.make_plan(["03"], "full", {}, reports, fp=here).estimates["03"].basis == "none"


def test_the_reference_time_is_scaled_by_this_machines_profile(reports, monkeypatch):
    monkeypatch.setattr(catalog, "REFERENCE", REF)
    here = _fp()
    _profile(reports, _fp(cpu="Other CPU"), 1.0, 1.0)  # another machine's profile is not used
    assert course_plan.make_plan(["04"], "ci", {}, reports, fp=here).rates is None
    _profile(reports, here, 2 * REF["fp32_gflops"], REF["bandwidth_gbps"] / 2)  # twice the flops, half the bandwidth
    plan = course_plan.make_plan(["04"], "ci", {}, reports, fp=here)
    want = catalog.lesson("04").reference_s * (course_plan.COMPUTE_SHARE * 0.5 + (1 - course_plan.COMPUTE_SHARE) * 2)
    assert plan.estimates["04"].basis == "scaled" and plan.estimates["04"].seconds == pytest.approx(want)
    assert any("notebook 01's profile" in line for line in plan.lines())
    monkeypatch.setattr(catalog, "REFERENCE", {**REF, "fp32_gflops": None})  # the reference's rates unknown
    e = course_plan.make_plan(["04"], "ci", {}, reports, fp=here).estimates["04"]
    assert e.basis == "reference" and "rates are not recorded" in e.source


def test_a_machine_with_no_profile_is_scaled_by_a_quick_probe_until_notebook_01_replaces_it(reports, monkeypatch):
    monkeypatch.setattr(catalog, "REFERENCE", REF)
    here, calls = _fp(), []

    def quick():  # a machine twice as fast in both rates
        calls.append(1)
        return {"fp32_gflops": 2 * REF["fp32_gflops"], "bandwidth_gbps": 2 * REF["bandwidth_gbps"],
                "from": course_plan.QUICK}

    plan = course_plan.make_plan(["01", "04"], "ci", {}, reports, fp=here, quick=quick)
    assert calls == [1] and plan.estimates["04"].basis == "scaled"
    assert plan.estimates["04"].seconds == pytest.approx(catalog.lesson("04").reference_s / 2)
    assert "a quick probe before the first lesson here against the reference's" in plan.estimates["04"].source
    assert "(quick probe)" in plan.estimates["01"].brief and "notebook 01 measures them again" in plan.lines()[1]
    _profile(reports, here, REF["fp32_gflops"], REF["bandwidth_gbps"])  # 01 measures: as fast as the reference
    lines = course_plan.replan(plan, reports, "01")
    assert lines[0].startswith("Re-planned from notebook 01's profile")
    assert plan.estimates["04"].seconds == pytest.approx(catalog.lesson("04").reference_s)
    course_plan.make_plan(["04"], "ci", {}, reports, fp=here, quick=quick)
    assert calls == [1]  # with a profile stored, nothing is probed
    _time(reports, _fp(cpu="Other"), "04", 1.0)
    other = _fp(cpu="Other")
    course_plan.make_plan(["04"], "ci", {}, reports, fp=other, quick=quick)
    assert calls == [1]  # every lesson measured on that machine: nothing to scale, nothing probed


def test_a_quick_probe_that_fails_leaves_the_reference_unscaled_and_the_plan_says_why(reports, monkeypatch):
    monkeypatch.setattr(catalog, "REFERENCE", REF)

    def quick():
        raise RuntimeError("no memory for the buffers")

    plan = course_plan.make_plan(["04"], "ci", {}, reports, fp=_fp(), quick=quick)
    e = plan.estimates["04"]
    assert e.basis == "reference" and e.seconds == pytest.approx(catalog.lesson("04").reference_s)
    assert "the quick probe failed (RuntimeError: no memory for the buffers)" in plan.lines()[1]


def test_the_reference_is_the_machine_closest_in_the_features_that_change_the_kernels(reports, monkeypatch):
    amx = {"machine": "an AMX box", "preset": "ci", "source": "test", "fp32_gflops": 400.0, "bandwidth_gbps": 40.0,
           "features": {"avx2": True, "avx512": True, "vnni": True, "avx512_bf16": True, "amx": True},
           "times": {"04": 30.0}}
    zen = {**REF, "features": {"avx2": True}}
    monkeypatch.setattr(catalog, "REFERENCE", zen)
    monkeypatch.setattr(catalog, "OTHER_REFERENCES", (amx,))
    xeon = _fp()
    xeon["isa"].update(avx512_bf16=True, amx_bf16=True)
    assert course_plan.reference_for(course_plan.machine(xeon)) is amx
    assert course_plan.reference_for(course_plan.machine(_fp())) is zen  # AVX-512 without AMX: AMX decides first
    assert course_plan.reference_for(course_plan.machine(_fp(avx512=False))) is zen
    _profile(reports, xeon, 200.0, 20.0)  # half the AMX reference's rates: twice its time
    plan = course_plan.make_plan(["04", "09"], "ci", {}, reports, fp=xeon)
    assert plan.reference is amx and plan.estimates["04"].seconds == pytest.approx(60.0)
    assert plan.estimates["09"].basis == "none"  # a lesson the reference did not time has no estimate from it
    assert any("an AMX box" in line for line in plan.lines())


def test_quick_rates_reads_the_probes_fp32_matmul_and_best_bandwidth():
    from labkit.core.bench import Timing
    from labkit.core.probes import Probe

    def t(s):
        return Timing(s, [s])

    def run(**kw):
        assert kw["dtypes"] == ("fp32",) and kw["devices"] == ("cpu",)
        return [Probe("read", "cpu", "fp32", "x", 10 * 10**9, 0, t(1.0)),
                Probe("matvec", "cpu", "fp32", "x", 30 * 10**9, 0, t(1.0)),
                Probe("matmul", "cpu", "fp32", "x", 0, 500 * 10**9, t(1.0))]

    assert course_plan.quick_rates(run) == {"fp32_gflops": 500.0, "bandwidth_gbps": 30.0, "from": course_plan.QUICK}


def test_a_lesson_with_a_budget_is_expected_to_take_at_most_its_budget(reports, monkeypatch):
    monkeypatch.setattr(catalog, "REFERENCE", REF)
    from dataclasses import replace

    les = replace(catalog.lesson("02"), reference_s=10 * catalog.lesson("02").budget_s)  # a reference over budget
    e = course_plan.estimate(les, "ci", {}, "key", [], None)
    assert e.seconds == les.budget_s and "budget_s" in e.source
    assert course_plan.estimate(les, "ci", {"budget_s": 90}, "key", [], None).seconds == 90
    # a run on this machine from before the budget (or over it) is capped too; one under it is kept
    ran = [{"config": {"lesson": "02", "preset": "ci", "machine_key": "key", "params": {}},
            "time": "2026-12-07T00:00:00", "metrics": {"seconds": 2.0 * les.budget_s}}]
    e = course_plan.estimate(les, "ci", {}, "key", ran, None)
    assert e.seconds == les.budget_s and "capping its last run" in e.source  # one run: that run
    ran[0]["metrics"]["seconds"] = 0.5 * les.budget_s
    assert course_plan.estimate(les, "ci", {}, "key", ran, None).seconds == 0.5 * les.budget_s


def test_the_budgets_of_notebooks_02_and_07_are_the_ones_their_settings_use():
    from labkit.lessons import casestudy, quantization

    assert catalog.lesson("02").budget_s == quantization.BUDGET_CI_S
    assert catalog.lesson("07").budget_s == casestudy.parameters.BUDGET_CI_S


def test_a_lesson_over_its_estimate_says_so():
    e = course_plan.Estimate("03", "03_x", 100.0, "its last run on this machine", "measured here")
    assert course_plan.outcome_line(e, 140.0).startswith("took 140 s against an estimate of 100 s (1.40x)")
    over = course_plan.outcome_line(e, 160.0)
    assert over.startswith("OVER ITS ESTIMATE") and "1.60x" in over and "last run on this machine" in over
    assert "no estimate" in course_plan.outcome_line(course_plan.Estimate("03", "03_x", None, "none", "none"), 5)


def test_the_outcome_names_the_load_a_lesson_ran_beside():
    e = course_plan.Estimate("03", "03_x", 100.0, "its last run on this machine", "measured here")
    idle, busy = {"others_cpu_share": 0.01, "busy": False}, {"others_cpu_share": 0.35, "busy": True}
    assert course_plan.outcome_line(e, 90.0, idle).endswith("(0.90x); the machine was otherwise idle")
    assert course_plan.outcome_line(e, 120.0, busy).endswith("(1.20x); others used 35% of the CPU meanwhile")
    over = course_plan.outcome_line(e, 160.0, busy)
    assert over.startswith("OVER ITS ESTIMATE") and over.endswith(
        "others used 35% of the CPU meanwhile: the likely cause, as the estimate assumes an idle machine")
    assert "likely cause" not in course_plan.outcome_line(e, 160.0, idle)  # over on an idle machine: no excuse given
    assert course_plan.outcome_line(e, 90.0, {"others_cpu_share": None}).endswith("(0.90x)")  # not measurable


def test_the_course_ends_with_its_time_against_the_estimates_and_the_busiest_lessons_load():
    from labkit.course.runner import NotebookRun

    runs = [NotebookRun("00", "00_a", 30.0, estimate_s=40.0, others_cpu_share=0.01),
            NotebookRun("01", "01_b", 90.0, estimate_s=60.0, others_cpu_share=0.02)]
    line = course_plan.summary_line(runs)
    assert line == ("2 notebook(s) ran, 0 failed, 120 s in all (2.0 min); 120 s against an estimate of 100 s (1.20x); "
                    "the machine was otherwise idle throughout")
    runs += [NotebookRun("02", "02_c", 10.0, others_cpu_share=0.5),  # no estimate, and beside a busy process
             NotebookRun("03", "03_d", 5.0, error="boom", estimate_s=50.0)]
    line = course_plan.summary_line(runs)
    assert line.startswith("3 notebook(s) ran, 1 failed, 135 s in all (2.2 min); 120 s against an estimate of 100 s "
                           "for the 2 with an estimate (1.20x)")
    assert line.endswith("others used up to 50% of the CPU during a lesson (02_c)")


def test_runs_beside_other_load_count_only_where_no_quiet_run_is_stored():
    les = catalog.lesson("03")

    def ran(seconds, busy, day):
        return {"config": {"lesson": "03", "preset": "ci", "machine_key": "key", "params": {}},
                "time": f"2026-12-0{day}T00:00:00", "metrics": {"seconds": seconds, "busy": busy}}

    e = course_plan.estimate(les, "ci", {}, "key", [ran(52.0, True, 1), ran(27.0, False, 2)], None)
    assert e.seconds == 27.0 and "1 run(s) beside other load left out" in e.source and "1 beside other" in e.brief
    e = course_plan.estimate(les, "ci", {}, "key", [ran(52.0, True, 1), ran(60.0, True, 2)], None)
    assert e.seconds == 56.0 and "left out" not in e.source  # only loaded runs: they are what there is
    old = {"config": ran(40.0, False, 1)["config"], "time": "2026-12-01T00:00:00", "metrics": {"seconds": 40.0}}
    assert course_plan.estimate(les, "ci", {}, "key", [old], None).seconds == 40.0  # a record from before the field


def test_once_notebook_01_has_profiled_the_machine_the_lessons_still_to_run_are_rescaled(reports, monkeypatch):
    monkeypatch.setattr(catalog, "REFERENCE", REF)
    here = _fp()
    _time(reports, here, "05", 33.0)  # a measured time here is kept: it beats a scaled reference
    plan = course_plan.make_plan(["01", "03", "04", "05"], "ci", {}, reports, fp=here)
    assert plan.estimates["04"].basis == "reference" and course_plan.replan(plan, reports, "01") == []  # no profile
    _profile(reports, here, REF["fp32_gflops"] / 2, REF["bandwidth_gbps"] / 2)  # a machine half as fast
    lines = course_plan.replan(plan, reports, "03")  # after 03: only 04 and 05 are still to run
    assert lines[0].startswith("Re-planned from notebook 01's profile") and "fp32 matmul 50 GFLOP/s" in lines[0]
    assert plan.estimates["04"].seconds == pytest.approx(2 * catalog.lesson("04").reference_s)
    assert plan.estimates["04"].basis == "scaled" and any("04_parallelism" in line and "was" in line for line in lines)
    assert plan.estimates["03"].basis == "reference"  # it ran already: its estimate stays what it was
    assert (plan.estimates["05"].seconds, plan.estimates["05"].basis) == (33.0, "measured here")
    assert course_plan.replan(plan, reports, "03") == []  # the same profile again changes nothing


def test_the_runner_prints_the_plan_stores_each_time_and_the_next_plan_starts_from_it(fake_course, reports, capsys,
                                                                                    monkeypatch):
    monkeypatch.setattr(catalog, "REFERENCE", REF)
    fp = _fp()
    run = course.run_course("ci", "00", {"n": 3}, reports=reports, fp=fp)
    out = capsys.readouterr().out
    assert out.startswith("Plan for preset ci on this machine: Test CPU 9000")
    assert "00_ok" in out.splitlines()[2] and "no run here" in out  # the fake lesson has no reference time
    assert out.rstrip().splitlines()[-1].strip().startswith("took ")  # what it took, as the lesson's last line
    (rec,) = records.read_records(reports / "results", course_plan.TIMES)
    assert rec["config"]["params"] == {"n": 3} and rec["metrics"]["seconds"] == pytest.approx(run.runs[0].seconds)
    assert "busy" in rec["metrics"] and "others_cpu_share" in rec["metrics"]  # the load it ran beside, measured
    again = course.course_plan_for("ci", "00", {"n": 3}, reports, fp=fp).estimates["00"]
    assert again.basis == "measured here" and again.seconds == pytest.approx(run.runs[0].seconds)
    assert course.course_plan_for("ci", "00", {"n": 4}, reports, fp=fp).estimates["00"].basis == "none"
    assert "estimated from" in (page := (reports / "index.html").read_text()) and "CPU used by others" in page
    assert main(["course", "--only", "00", "--plan", "--reports", str(reports)]) == 0
    assert "Plan for preset ci" in capsys.readouterr().out
    assert len(records.read_records(reports / "results", course_plan.TIMES)) == 1  # --plan ran nothing
