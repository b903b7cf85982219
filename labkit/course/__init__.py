"""labkit.course: the notebook plumbing above the lessons.

catalog (the one lesson table: id, title, notebook, record names, summary), lesson (start/finish a lesson, show a
figure, save a record), claims (the guide's claims and their verdicts from the records), summaries and report (the
index page), runner (the papermill runner behind `python -m labkit course`), cuda_check (the prepared GPU check).
"""
