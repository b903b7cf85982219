"""Every notebook ends with "Try this"; each suggestion's parameters must still be accepted by the notebook (its
parameters cell and the set-up cell that checks them run with the suggestion; the full variants are for learners)."""

import pytest

from labkit.course import runner as course

CASES = [(nb_id, params) for nb_id in course.notebooks() for params in course.try_this(nb_id)]


def test_every_lesson_suggests_something_to_try():
    for nb_id in course.notebooks():
        if nb_id != "08":  # the ledger's suggestions are commands for the other lessons
            assert course.try_this(nb_id), f"notebook {nb_id} has no 'Try this' with parameters"


@pytest.mark.notebooks
@pytest.mark.parametrize("nb_id, params", CASES, ids=[f"{n}-{'-'.join(p)}" for n, p in CASES])
def test_try_this_parameters_are_accepted(nb_id, params, tmp_path):
    assert course.check_try_this(nb_id, params, tmp_path / "reports") is None


def test_a_broken_suggestion_is_caught(tmp_path):
    err = course.check_try_this("00", {"layers": 0}, tmp_path / "reports")
    assert err is not None and "layers must be >= 1" in err
