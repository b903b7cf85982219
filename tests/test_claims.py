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


def test_c7_statuses_follow_the_measured_cuts():
    def cut(label, x, ppl, **kw):
        return {"label": label, "decode_x": x, "decode_words": f"{x:.2f}x faster", "ppl_change": ppl, **kw}

    assert claims.c7(None, None).status == claims.NOT_MEASURED
    assert claims.c7(cut("magnitude 40%", 2.0, 0.01)).status == claims.REPRODUCED  # 2.0 is within 10% of 2.1
    kept_slow = claims.c7(cut("magnitude 40%", 1.01, 0.008, agreement=0.97), cut("ffn 40%", 1.2, 0.05))
    assert kept_slow.status == claims.PARTLY
    assert "keeps perplexity within 1.2%" in kept_slow.evidence and "no 40% cut reaches 1.9x" in kept_slow.evidence
    assert "97.0%" in kept_slow.evidence and "magnitude 40%: 1.01x" in kept_slow.measured
    fast_structured = claims.c7(cut("magnitude 40%", 1.0, 0.03), cut("ffn 40%", 2.2, 0.08,
                                                                       ppl_change_recovered=0.02))
    assert fast_structured.status == claims.PARTLY and "ffn 40%" in fast_structured.evidence.split("reaches")[-1]
    assert "+2.0% after the recovery" in fast_structured.evidence
    slow_lossy = claims.c7(cut("magnitude 40%", 1.02, 0.05), cut("ffn 40%", 1.3, 0.04))
    assert slow_lossy.status == claims.NOT_REPRODUCED and "does not keep" in slow_lossy.evidence
    assert claims.c7(None, cut("ffn 40%", 1.3, 0.04)).status == claims.NOT_REPRODUCED
