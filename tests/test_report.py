"""The index page: numbers for people, a line for every lesson, figures that open full size."""

from labkit import records, report


def test_numbers_are_formatted_for_people():
    assert report.fmt(30470.2, "ms") == "30,470 ms"
    assert report.fmt(12.345, "tok/s") == "12.3 tok/s"
    assert report.fmt(2.5, "x") == "2.50x"
    assert report.fmt(None) == "–" and report.fmt(float("nan")) == "–"
    assert report.fmt_bytes(929062900) == "886 MiB"
    assert report.fmt_bytes(3 * 2**30) == "3.00 GiB"


def test_index_has_a_line_for_every_lesson_and_full_size_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_REPORTS", str(tmp_path))
    records.save("00_baseline", {"preset": "ci"}, {"ttft_median_ms": 2164.0, "tpot_median_ms": 92.4,
                                                   "output_throughput": 5.6, "noise_floor": 0.02},
                 root=tmp_path / "results")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "00_per_token_latency.png").write_bytes(b"png")
    page = report.write_index(tmp_path).read_text()
    assert "2,164 ms" in page and "92.4 ms" in page and "5.60 tok/s" in page and "2.00%" in page
    assert '<a href="figures/00_per_token_latency.png"><img src="figures/00_per_token_latency.png"' in page
    for nb_id, _title, _ in report.LESSONS:
        assert f"{nb_id} · " in page
    assert "not run yet: <code>python -m labkit course --only 02</code>" in page
    assert "3.047e+04" not in page


def test_single_file_report_needs_no_other_file(tmp_path, monkeypatch, capsys):
    import base64

    from labkit.__main__ import main

    monkeypatch.setenv("LABKIT_REPORTS", str(tmp_path))
    records.save("00_baseline", {"preset": "ci"}, {"ttft_median_ms": 2164.0}, root=tmp_path / "results")
    (tmp_path / "figures").mkdir()
    png = b"\\x89PNG fake bytes"
    (tmp_path / "figures" / "00_per_token_latency.png").write_bytes(png)
    out = tmp_path / "elsewhere" / "share.html"
    assert main(["report", "--single-file", "--out", str(out)]) == 0
    page = out.read_text()
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page
    assert 'href="figures/' not in page and 'src="figures/' not in page and 'href="notebooks/' not in page
    assert "Fingerprint" in page and "made 20" in page and "2,164 ms" in page
