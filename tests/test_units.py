"""The course's one copy of its small formatting helpers: bytes, dtype names, ratio words, log-axis ticks."""

import pytest
import torch

from labkit.core import units
from labkit.core.bench import Ratio


def test_bytes_are_written_in_the_largest_unit_they_reach():
    assert units.fmt_bytes(929062900) == "886 MiB"
    assert units.fmt_bytes(3 * 2**30) == "3.00 GiB"
    assert units.fmt_bytes(12.5 * 2**10) == "12.5 KiB"
    assert units.fmt_bytes(512) == "512 B" and units.fmt_bytes(None) == "–"
    assert units.mib(3 * 2**20) == 3 and units.gib(2**29) == 0.5


def test_counts_are_written_in_the_largest_unit_they_reach():
    assert units.fmt_count(6_738_415_616) == "6.74 B"
    assert units.fmt_count(16_100_000) == "16.1 M"
    assert units.fmt_count(4_096) == "4.10 K" and units.fmt_count(512) == "512"


def test_dtype_names_go_both_ways():
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.int8):
        assert units.TORCH_DTYPES[units.dtype_name(dtype)] is dtype
    assert units.dtype_name(torch.float64) == "float64"  # any other dtype by torch's own name


def test_ratio_words_read_as_a_sentence_either_way():
    faster, noise = Ratio([2.5] * 5).words(), Ratio([1.01, 0.99, 1.02]).words()
    assert units.than(faster, "eager") == "2.50x faster than eager"
    assert units.than(Ratio([0.8] * 3).words(), "one process", 89.2) == "1.25x slower than one process (89.2 ms)"
    said = units.than(noise, "eager")
    assert said.startswith("no different from eager: inconclusive") and "than" not in said


def test_log_ticks_are_plain_numbers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert [units.tick_label(v) for v in (1000, 20, 1, 0.5)] == ["1,000", "20", "1", "0.5"]
    fig, ax = plt.subplots()
    ax.set_yscale("log")
    units.plain_log_ticks(ax)
    major, minor = ax.yaxis.get_major_formatter(), ax.yaxis.get_minor_formatter()
    assert major(100, 0) == "100" and minor(20, 0) == "20" and minor(50, 0) == "50" and minor(30, 0) == ""
    with pytest.raises(ValueError, match="axis"):
        units.plain_log_ticks(ax, axis="z")
    plt.close(fig)


def test_a_percentage_beside_its_bar_never_prints_equal_to_it_when_it_is_not():
    from labkit.core.units import pct_beside
    from labkit.course.claims import compression

    assert pct_beside(0.0124, 0.012) == "+1.24%" and pct_beside(0.0116, 0.012) == "+1.16%"
    assert pct_beside(0.044, 0.012) == "+4.4%" and pct_beside(0.012, 0.012) == "+1.2%"
    assert pct_beside(0.01201, 0.012, sign=False) == "1.201%"
    v = compression.c7({"label": "magnitude 40%", "decode_x": 1.0, "decode_words": "inconclusive (1.00x)",
                        "ppl_change": 0.0124, "conclusive": False})
    assert "held-out perplexity +1.24%" in v.evidence and "+1.24% perplexity" in v.measured
