import pytest

from labkit.course import catalog, claims


def test_every_claim_and_snippet_of_the_guide_is_listed():
    assert list(claims.CLAIMS) == [f"C{i}" for i in range(1, 18)]
    assert list(claims.SNIPPETS) == ["S1", "S2", "S3", "S4"]
    assert all(catalog.find(c.notebook) is not None for c in claims.CLAIMS.values())


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


def _rec(metrics: dict) -> dict:
    return {"metrics": metrics, "_path": "reports/results/x/1.json", "fingerprint": {"cpu": "test cpu"}}


def _profile(decode_bound="memory", loads=True, anon_mmap=1 << 20) -> dict:
    m = {"device": "cpu",
         "probes": {"cpu": {"bandwidth_gbps": {"best": 40.0}, "matmul_gflops": {"fp32": 200.0, "bf16": 800.0,
                                                                                "int8": 1600.0},
                            "matvec_gbps": {"fp32": 30.0}}},
         "baseline": {"dtype": "fp32", "decode_fraction": 0.5, "decode_bound": decode_bound, "tpot_s": 0.09,
                      "decode_floor_s": 0.045, "prefill_bound": "compute"}}
    if loads:
        f = 64 << 20
        m["loads"] = [{"method": "mmap", "file_bytes": f, "anon_growth_bytes": anon_mmap, "first_s": 0.1,
                       "repeat_s": 0.01},
                      {"method": "read", "file_bytes": f, "anon_growth_bytes": f, "first_s": 0.2, "repeat_s": 0.05,
                       "peak_rss_growth_bytes": 2 * f}]
        m["disk"] = {"cold_read_gbps": 1.2}
    return _rec(m)


def test_lesson_01_claims_through_their_statuses():
    assert claims.c1(None).status == claims.NOT_MEASURED
    v = claims.c1(_profile())
    assert v.status == claims.NOT_MEASURABLE and "needs a V100" in v.evidence and v.machine == "test cpu"
    assert claims.c2(_profile()).status == claims.REPRODUCED
    assert claims.c2(_profile(decode_bound="compute")).status == claims.NOT_REPRODUCED
    assert claims.c2(None).status == claims.NOT_MEASURED
    assert claims.c4(_profile()).status == claims.PARTLY
    assert claims.c4(_profile(anon_mmap=64 << 20)).status == claims.NOT_REPRODUCED
    assert claims.c4(_profile(loads=False)).status == claims.NOT_MEASURED


def _quality(**ppl) -> dict:
    rows = [{"method": "fp32", "status": "ok", "ppl_vs_fp32": 1.0, "bits_per_weight": 32.0, "bytes": 100}]
    rows += [{"method": m, "status": "ok", "ppl_vs_fp32": v, "bits_per_weight": 8.1 if "int8" in m else 4.2,
              "bytes": 40, "token_agreement": 0.97} for m, v in ppl.items()]
    return _rec({"quality": rows})


def test_lesson_02_claims_through_their_statuses():
    kw = {"int8-dynamic": 1.002}
    assert claims.c5(_quality(**kw)).status == claims.REPRODUCED
    assert claims.c5(_quality(**{"int8-dynamic": 1.2})).status == claims.PARTLY  # size yes, accuracy no
    assert claims.c5(_quality()).status == claims.NOT_MEASURED
    assert claims.c6(_quality(rtn=1.05, gptq=1.01, awq=1.02)).status == claims.REPRODUCED
    assert claims.c6(_quality(rtn=1.05, gptq=1.01, awq=1.06)).status == claims.PARTLY
    assert claims.c6(_quality(rtn=1.01, gptq=1.02, awq=1.03)).status == claims.NOT_REPRODUCED
    assert claims.c6(_quality(rtn=1.01)).status == claims.NOT_MEASURED
    assert claims.c13(_quality(**kw, rtn=1.05)).status == claims.PARTLY
    assert claims.c13(_quality(**kw, rtn=1.005)).status == claims.NOT_REPRODUCED  # more than INT8, under 1%
    assert "under 1%" in claims.c13(_quality(**kw, rtn=1.005)).evidence
    assert claims.c13(_quality(rtn=1.05)).status == claims.NOT_MEASURED


def _servers(thr=1.5, std=0.3, p99=(5000.0, 2000.0)) -> dict:
    static = {"server": "static", "status": "ok", "output_throughput": 10.0, "e2e_std_ms": 1000.0,
              "ttft_p99_ms": p99[0]}
    engine = {"server": "engine", "status": "ok", "output_throughput": 10.0 * thr, "e2e_std_ms": 1000.0 * std,
              "ttft_p99_ms": p99[1]}
    return _rec({"poisson": [static, engine], "all_at_once": [static, engine]})


def test_lesson_05_claims_through_their_statuses():
    assert claims.c9(_servers()).status == claims.REPRODUCED
    assert claims.c9(_servers(thr=1.2)).status == claims.PARTLY
    assert claims.c9(_servers(thr=1.2, std=0.9)).status == claims.NOT_REPRODUCED
    assert claims.c9(_rec({"poisson": []})).status == claims.NOT_MEASURED
    rounds = _servers(thr=1.5)  # replayed in rounds: the median of the per-round ratios, not the median rows' ratio
    rounds["metrics"]["poisson"][1]["throughput_x_vs_static"] = 1.2
    assert claims.c9(rounds).status == claims.PARTLY and "1.20x" in claims.c9(rounds).evidence
    assert claims.c16(_servers()).status == claims.REPRODUCED
    assert claims.c16(_servers(p99=(1000.0, 2000.0))).status == claims.NOT_REPRODUCED
    assert claims.c16(None).status == claims.NOT_MEASURED


def test_lesson_07_claim_through_its_statuses():
    m = {"throughput_ratio": 6.0, "ttft_idle_ratio": 5.0, "asserted": True, "passed": True, "message": "ok",
         "stages": [{"stage": "baseline"}, {"stage": "+ INT8", "throughput_x_prev": 3.0, "guide_factor": 2.3}]}
    v = claims.c12(_rec(m))
    assert v.status == claims.REPRODUCED and "+ INT8 3.00x (guide 2.3)" in v.evidence
    assert claims.c12(_rec({**m, "passed": False})).status == claims.NOT_REPRODUCED
    assert claims.c12(_rec({**m, "asserted": False})).status == claims.NOT_MEASURABLE
    assert claims.c12(_rec({**m, "asserted_ratios": ["output throughput"]})).status == claims.PARTLY
    assert claims.c12(None).status == claims.NOT_MEASURED


def test_ledger_reads_the_latest_records_and_never_guesses(tmp_path):
    from labkit.core import records

    root = tmp_path / "results"
    fp = {"cpu": "test cpu", "versions": {}}
    records.write_record(records.make_record("00_baseline", {"prompt_tokens": 512, "seed": 0, "cold_start_apart": True},
                                             {"cold_over_warm_E2E": 1.1, "cold_over_warm_TTFT": 3.5,
                                              "steady_requests": 4}, fingerprint=fp), root)
    q = _quality(**{"int8-dynamic": 1.002}, rtn=1.05, gptq=1.01, awq=1.02)["metrics"]
    records.write_record(records.make_record("02_quantization", {}, q, fingerprint=fp), root)
    got = {v.claim: v for v in claims.ledger(root)}
    assert list(got) == list(claims.CLAIMS)
    assert got["C15"].status == claims.PARTLY and got["C17"].status == claims.REPRODUCED
    assert got["C5"].status == claims.REPRODUCED and got["C6"].status == claims.REPRODUCED
    assert got["C9"].status == claims.NOT_MEASURED and "--only 05" in got["C9"].evidence
    assert got["C5"].record.endswith(".json") and got["C5"].machine == "test cpu"
    n = claims.counts(list(got.values()))
    assert sum(n.values()) == 17 and n[claims.REPRODUCED] == 3


def test_what_to_trust_groups_the_claims_by_status():
    vs = [claims.Verdict("C2", claims.REPRODUCED, "x"), claims.Verdict("C3", claims.NOT_REPRODUCED, "y"),
          claims.not_measured("C9")]
    lines = claims.what_to_trust(vs)
    assert lines[0].startswith("Holds on this machine: C2 (memory bandwidth decides decode speed")
    assert lines[1].startswith("Does not hold here, as measured: C3") and lines[2].startswith("Not measured yet")
    assert len(lines) == 3

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


def test_ledger_judges_lesson_04_claims_from_its_record(tmp_path):
    from labkit.core import records

    mem = [{"single": 100.0, "tp": 50.0, "pp": 52.0, "dp": 100.0}, {"single": 100.0, "tp": 50.0, "pp": 48.0,
                                                                    "dp": 100.0}]
    gran = [{"hidden": 2048, "phase": "prefill", "compute saved ms": 30.0, "collectives ms": 9.0,
             "TP compute ms": 40.0, "one rank ms": 70.0},
            {"hidden": 256, "phase": "prefill", "compute saved ms": 0.5, "collectives ms": 5.0,
             "TP compute ms": 1.0, "one rank ms": 1.5}]
    rec = records.make_record("04_parallelism", {"world_size": 2}, {"results": {"memory": mem}, "granularity": gran},
                              fingerprint={"cpu": "test", "versions": {}})
    records.write_record(rec, tmp_path / "results")
    got = {v.claim: v for v in claims.ledger(tmp_path / "results")}
    assert got["C3"].status == claims.NOT_REPRODUCED and "TP=2 rank holds 0.50" in got["C3"].evidence
    assert got["C8"].status in (claims.PARTLY, claims.REPRODUCED)
    assert got["C14"].status == claims.REPRODUCED


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


def test_ledger_judges_c7_from_lesson_03s_record(tmp_path):
    from labkit.core import records

    cut = {"label": "magnitude 40%", "decode_x": 1.01, "decode_words": "1.01x (inconclusive)", "ppl_change": 0.008}
    ffn = {"label": "ffn 40%", "decode_x": 1.3, "decode_words": "1.30x faster", "ppl_change": 0.2}
    rec = records.make_record("03_pruning", {}, {"c7": {"magnitude": cut, "structured": ffn}},
                              fingerprint={"cpu": "test", "versions": {}})
    records.write_record(rec, tmp_path / "results")
    got = {v.claim: v for v in claims.ledger(tmp_path / "results")}
    assert got["C7"].status == claims.PARTLY and "magnitude 40%: 1.01x" in got["C7"].measured
    assert got["C7"].record.endswith(".json")


def test_each_claim_reads_the_catalogs_record_of_the_lesson_that_measures_it():
    assert set(claims.SOURCES) == set(claims.CLAIMS)
    for cid, (lesson_ids, _judge) in claims.SOURCES.items():
        assert claims.CLAIMS[cid].notebook in lesson_ids, cid
        assert claims.source_records(cid) == tuple(catalog.lesson(i).record for i in lesson_ids)
    assert claims.source_records("C15") == (catalog.lesson("06").record, catalog.lesson("00").record)


def test_the_package_gathers_every_public_name_of_its_modules():
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(claims.__path__):
        m = importlib.import_module(f"{claims.__name__}.{mod.name}")
        public = {k for k, v in vars(m).items() if not k.startswith("_") and getattr(v, "__module__", m.__name__)
                  == m.__name__ and (callable(v) or k.isupper())}
        assert public - set(claims.__all__) == set(), mod.name
    assert all(hasattr(claims, k) for k in claims.__all__)


def test_the_ledgers_figure_has_a_bar_per_status_as_long_as_its_count():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vs = [claims.Verdict("C2", claims.REPRODUCED, "x"), claims.Verdict("C3", claims.REPRODUCED, "y"),
          claims.Verdict("C5", claims.NOT_MEASURED, "z")]
    fig = claims.plot_counts(vs)
    bars = fig.axes[0].patches
    assert [b.get_width() for b in bars] == list(claims.counts(vs).values())
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(claims.STATUSES)
    assert "3 claims" in fig.axes[0].get_title()
    plt.close(fig)
