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



def _section(page: str, lesson_id: str) -> str:
    start = page.index(f'<section id="lesson-{lesson_id}">')
    return page[start:page.index("</section>", start)]


def test_index_shows_the_ledger_open_in_08s_section_and_no_raw_metric_keys(tmp_path, monkeypatch):
    """What a learner found: a collapsed claims table, raw keys ("ppl delta pct"), an empty 08 section, figures
    shrunk two to a row. Now: the ledger open in 08's section, keys in words, one figure per row."""
    import html

    from labkit.course.claims.verdict import CLAIMS

    monkeypatch.setenv("LABKIT_REPORTS", str(tmp_path))
    results = tmp_path / "results"
    verdicts = [{"claim": "C5", "status": "reproduced", "guide": "1/4 size, >95%", "measured": "0.27 of fp32",
                 "evidence": "int8 layers 27% of fp32, perplexity +0.4%"},
                {"claim": "C9", "status": "not reproduced", "guide": "1.4x", "measured": "1.1x",
                 "evidence": "continuous batching 1.1x static"}]
    records.save("08_claims_ledger", {"preset": "ci"}, {"verdicts": verdicts, "counts": {
        "reproduced": 1, "partly": 0, "not reproduced": 1}}, root=results)
    case = {"final_stage": "int8 + batching + sdpa", "throughput_ratio": 3.1, "ttft_idle_ratio": 2.2,
            "ttft_loaded_ratio": 4.0, "ppl_delta_pct": 0.8, "passed": False, "asserted": False,
            "stages": [{"stage": "baseline", "status": "ok", "ttft_idle_ms": 812.0, "output_throughput": 4.1}],
            "quality": [{"stage": "baseline", "ppl_delta_pct": 0.0}], "message": "measured"}
    records.save("07_case_study", {"preset": "ci"}, case, root=results)
    (tmp_path / "figures").mkdir()
    for name in ("07_stages", "08_ledger_counts"):
        (tmp_path / "figures" / f"{name}.png").write_bytes(b"png")
    page = report.write_index(tmp_path).read_text()
    ledger = _section(page, "08")
    assert "<details" not in page and "<table class=claims>" in ledger  # open, in 08's section
    assert "1 reproduced, 1 not reproduced" in ledger and '<a href="#lesson-08">' in page
    for v in verdicts:
        assert v["evidence"] in ledger and CLAIMS[v["claim"]].words in ledger.replace("&quot;", '"')
    assert 'src="figures/08_ledger_counts.png"' in ledger
    s07 = _section(page, "07")
    assert "3.10x the baseline" in s07 and "+0.80%" in s07 and 'src="figures/07_stages.png"' in s07
    for key in ("ppl_delta_pct", "ttft_idle_ratio", "ttft_loaded_ratio", "throughput_ratio", "ttft_idle_ms"):
        assert key not in page and key.replace("_", " ") not in page, key  # a key, with or without underscores
    assert "width:48%" not in page and "max-width:100%" in page  # one figure per row, at the column's width
    para = s07.index(f"<p class=summary>{html.escape(report.QUESTIONS['07'])} On this machine: ")
    assert para < s07.index("<figure>")  # the lesson's paragraph, then its figure


def test_a_lesson_without_its_own_summary_shows_its_numbers_in_words():
    from labkit.course import summaries

    rows = summaries.generic({"ppl_delta_pct": 1.25, "ttft_idle_ratio": 2.0, "note": "text"})
    assert rows == [["perplexity change (%)", "1.25"], ["idle TTFT, times lower than the baseline (x)", "2.00"]]


def test_the_index_opens_with_the_advice_from_its_records(tmp_path):
    """The recommendation heads the index; with no records it names the commands that make them, no number."""
    from labkit.course import report

    (tmp_path / "results").mkdir(parents=True)
    page = report.write_index(tmp_path).read_text()
    assert "What to run on this machine" in page
    head = page.split("What to run on this machine", 1)[1].split("</pre>", 1)[0]
    assert "notebook 01" in head or "--only 01" in head or "labkit course" in head
