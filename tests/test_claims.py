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


# ---------------------------------------------------------------- notebook 04 (parallelism): C3, C8, C14

def test_c3_follows_the_planner_and_the_measured_split():
    assert claims.c3(None).status == claims.NOT_MEASURED
    one = claims.c3(0.5)  # 13B fp16 at 4,096 tokens fits one A100-40GB
    assert one.status == claims.NOT_REPRODUCED and "one card holds it" in one.evidence
    assert claims.c3(0.5, batch=16).status == claims.REPRODUCED  # a batch of 16 needs more than one
    two = claims.c3(0.5, card="V100-16GB", link="PCIe carries the prefill's all-reduces in time")
    assert two.status == claims.REPRODUCED and "it takes 2 cards" in two.evidence and "PCIe" in two.evidence
    assert claims.c3(0.7, card="V100-16GB").status == claims.PARTLY  # TP did not split the weights as assumed


def test_c8_needs_3d_only_where_a_model_outgrows_one_node():
    fr = {"TP=2": 0.5, "PP=2": 0.5, "DP=2": 1.0}
    assert claims.c8(None).status == claims.NOT_MEASURED
    assert claims.c8(fr, cards=["A100-80GB"]).status == claims.NOT_REPRODUCED
    v = claims.c8(fr)  # 70B fp16 does not fit 8 x V100-16GB
    assert v.status == claims.PARTLY and "V100-16GB >8x" in v.evidence and "DP=2 1.00" in v.evidence
    assert claims.c8(fr, models=("llama-2-70b",), cards=["V100-16GB"]).status == claims.REPRODUCED


def _g(hidden, phase, saved, comm, tp=1.0, one=2.0):
    return {"hidden": hidden, "phase": phase, "compute saved ms": saved, "collectives ms": comm,
            "TP compute ms": tp, "one rank ms": one}


def test_c14_looks_for_the_size_where_communication_outweighs_the_saving():
    assert claims.c14([]).status == claims.NOT_MEASURED
    cross = claims.c14([_g(4096, "decode", 5.0, 1.0), _g(512, "decode", 0.5, 1.0), _g(128, "decode", -1, 1.0)])
    assert cross.status == claims.REPRODUCED and "from hidden 512 down" in cross.evidence
    assert "saves nothing" in cross.evidence  # a negative saving is said as such
    assert claims.c14([_g(4096, "decode", 0.5, 1.0), _g(128, "decode", 0.1, 1.0)]).status == claims.PARTLY
    assert claims.c14([_g(4096, "decode", 5.0, 1.0), _g(128, "decode", 2.0, 1.0)]).status == claims.NOT_REPRODUCED
