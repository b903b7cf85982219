"""The index page: numbers for people, a line for every lesson, figures that open full size."""

from labkit.core import records
from labkit.course import catalog, report


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
    for les in catalog.LESSONS:
        assert f"{les.id} · {les.title}" in page.replace("&#x27;", "'")
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


def test_lessons_03_to_09_summarize_their_records_in_words_with_units():
    s03 = catalog.lesson("03").summary({"quality": [{"label": "dense", "status": "ok", "ppl_change": 0.0},
                                              {"label": "ffn 40%", "status": "ok", "ppl_change": 0.046}],
                                  "speed": [{"label": "dense", "status": "ok", "decode_x": 1.0},
                                            {"label": "ffn 40%", "status": "ok", "decode_x": 1.24,
                                             "predicted_decode_x": 1.25}]})
    assert s03 == [["ffn 40%", "decode 1.24x dense (floor predicts 1.25x), perplexity +4.6%"]]
    s04 = catalog.lesson("04").summary({"allreduce_fit": {"latency_s": 0.00129, "busbw_gbps": 0.92, "world_size": 2}})
    assert s04 == [["all-reduce", "latency 1.29 ms, bus bandwidth 0.92 GB/s (2 ranks)"]]
    att = [{"status": "ok", "n": 2048, "backend": b, "x_vs_eager": x, "peak_MiB": p}
           for b, x, p in (("eager", 1.0, 1604.0), ("sdpa-flash", 14.3, 26.3))]
    s06 = catalog.lesson("06").summary({"attention": att})
    assert s06[0][1] == "sdpa-flash 14.3x eager, peak 26.3 MiB vs 1,604 MiB"
    table = [{"metric": "TPOT median (ms per output token)", "in process": 15.6, "over HTTP": 22.6,
              "over HTTP it is": "1.45x slower"}]
    assert catalog.lesson("09").summary({"side_by_side": {"table": table}}) == [
        ["TPOT median (ms per output token)", "15.6 in process, 22.6 over HTTP (1.45x slower)"]]


def test_each_lesson_is_summarised_from_the_record_the_catalog_names(tmp_path, monkeypatch):
    """The index reads a lesson's main record by its catalog name, nothing else: a record under a name that only
    starts with the lesson's id is not taken for it."""
    monkeypatch.setenv("LABKIT_REPORTS", str(tmp_path))
    records.save("02_something_else", {"preset": "ci"}, {"x": 1.0}, root=tmp_path / "results")
    page = report.write_index(tmp_path).read_text()
    assert "not run yet: <code>python -m labkit course --only 02</code>" in page
    main = catalog.lesson("02").record
    speed = [{"method": "fp32", "status": "ok", "decode_ms_per_token": 10.0, "decode_x_vs_fp32": 1.0},
             {"method": "int8-dynamic", "status": "ok", "decode_ms_per_token": 5.0, "decode_x_vs_fp32": 2.0}]
    records.save(main, {"preset": "full"}, {"speed": speed}, root=tmp_path / "results")
    page = report.write_index(tmp_path).read_text()
    assert "int8-dynamic: 5.00 ms/token, 2.00x fp32" in page and "preset full" in page

