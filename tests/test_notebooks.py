"""Every notebook of the course, executed headlessly with the ci preset, in teaching order.

They share one reports folder (like a real run), so later lessons find the records earlier ones wrote.
"""

import json

import pytest

from labkit.course import runner as course

NOTEBOOKS = list(course.notebooks())


@pytest.fixture(scope="module")
def shared_reports(tmp_path_factory):
    return tmp_path_factory.mktemp("course") / "reports"


@pytest.mark.notebooks
@pytest.mark.parametrize("nb_id", NOTEBOOKS)
def test_notebook_runs_with_ci_preset(nb_id, shared_reports, monkeypatch):
    monkeypatch.setenv("LABKIT_REPORTS", str(shared_reports))
    params = json.loads((course.ROOT / "ci" / "params.json").read_text())
    before = set((shared_reports / "results").glob("*/*.json"))
    r = course.run_notebook(nb_id, "ci", course.params_for(nb_id, params), shared_reports, progress=False)
    assert r.error is None, r.error
    assert r.output.exists() and r.html.exists()
    new = set((shared_reports / "results").glob("*/*.json")) - before
    assert new, f"notebook {nb_id} stored no result record of its own"
    for path in new:  # each new record was written by this run, in the ci preset
        rec = json.loads(path.read_text())
        assert rec["config"].get("preset") == "ci", (path, rec["config"])
    assert course.output_problems(r.output) == []  # every figure shows, no cut reason, no leaked warning


@pytest.mark.notebooks
def test_no_record_of_the_course_shows_a_beaten_floor_without_its_reason(shared_reports):
    """After the notebooks (it runs last in this module, on their shared reports folder): every fraction of a floor
    a record holds is at most 1.05, or carries the reason its floor was re-derived (labkit.core.floors)."""
    from labkit.core import floors

    if not (shared_reports / "results").exists():
        pytest.skip("no notebook of this module ran (select them with -k to check their records)")
    assert floors.floor_problems(shared_reports) == []
