import pytest

from labkit import claims


def test_every_claim_and_snippet_of_the_guide_is_listed():
    assert list(claims.CLAIMS) == [f"C{i}" for i in range(1, 18)]
    assert list(claims.SNIPPETS) == ["S1", "S2", "S3", "S4"]
    assert all(c.notebook in {"00", "01", "02", "03", "04", "05", "06", "07"} for c in claims.CLAIMS.values())


def test_verdict_refuses_unknown_claims_and_statuses():
    with pytest.raises(ValueError, match="unknown claim"):
        claims.Verdict("C99", claims.REPRODUCED, "x")
    with pytest.raises(ValueError, match="unknown status"):
        claims.Verdict("C15", "sort of", "x")
    assert claims.Verdict("C15", claims.REPRODUCED, "x").guide == "3-5x"


def test_c15_statuses_follow_the_measured_ratios():
    assert claims.c15({}).status == claims.NOT_MEASURED
    assert claims.c15({"compiled": 4.0}).status == claims.REPRODUCED
    v = claims.c15({"eager generate": 1.07, "compiled decode": 3.5})
    assert v.status == claims.PARTLY and "compiled decode" in v.evidence.split("inside")[-1]
    assert claims.c15({"eager generate": 1.07}).status == claims.NOT_REPRODUCED
    assert "1.07x" in claims.c15({"eager generate": 1.07}).evidence


def test_c17_is_judged_from_the_configuration_measured():
    good = {"prompt_tokens": 512, "seed": 0, "cold_start_apart": True}
    assert claims.c17(good, repeats=4, fingerprint_stored=True).status == claims.REPRODUCED
    short = claims.c17({**good, "prompt_tokens": 64}, repeats=4, fingerprint_stored=True)
    assert short.status == claims.PARTLY and "512-token prompts" in short.evidence.split("not followed")[-1]
    assert claims.c17({}, repeats=1, fingerprint_stored=False).status == claims.NOT_REPRODUCED


def test_c10_statuses_follow_the_measured_peaks():
    assert claims.c10({}, "cpu").status == claims.NOT_MEASURED
    cpu = claims.c10({"fp32": 100.0, "autocast": 130.0}, "cpu")
    assert cpu.status == claims.NOT_REPRODUCED and "+30%" in cpu.evidence and "CUDA" in cpu.evidence
    assert claims.c10({"fp32": 100.0, "autocast": 68.0}, "cpu").status == claims.PARTLY
    both = {"fp32": 100.0, "autocast": 80.0, "autocast+empty_cache": 70.0}
    assert claims.c10(both, "cuda").status == claims.REPRODUCED
    amp_only = claims.c10({"fp32": 100.0, "autocast": 70.0, "autocast+empty_cache": 70.0}, "cuda")
    assert amp_only.status == claims.PARTLY and "not the peak" in amp_only.evidence
    assert claims.c10({"fp32": 100.0, "autocast": 95.0, "autocast+empty_cache": 94.0}, "cuda").status == \
        claims.NOT_REPRODUCED


def test_c11_statuses_follow_the_sweep():
    def row(n, x, save, conclusive=True):
        return {"n": n, "kernel": "sdpa -> flash", "speedup": x, "conclusive": conclusive, "memory_saving": save}

    assert claims.c11([], "cpu").status == claims.NOT_MEASURED
    assert claims.c11([], "cpu", skipped="no fused kernel").status == claims.NOT_MEASURABLE
    v = claims.c11([row(256, 1.2, 0.5), row(2048, 11.0, 0.97)], "cpu", a100_length=1024)
    assert v.status == claims.REPRODUCED and "n=2,048" in v.measured and "1,024" in v.evidence
    assert claims.c11([row(2048, 2.0, 0.9)], "cpu").status == claims.PARTLY
    assert claims.c11([row(2048, 3.5, 0.9, conclusive=False)], "cpu").status == claims.PARTLY
    assert claims.c11([row(2048, 3.5, 0.1)], "cpu").status == claims.PARTLY
    assert claims.c11([row(2048, 1.1, 0.1)], "cpu").status == claims.NOT_REPRODUCED
