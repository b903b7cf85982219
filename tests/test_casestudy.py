"""The case study's pieces: stage plan, measuring on a small model, the check's arithmetic, the projection."""

import statistics

import pytest
import torch

from labkit.core import hardware, models, roofline
from labkit.lessons import casestudy
from labkit.serve import workload
from labkit.techniques import quant


def test_plan_names_the_stages_and_skips_bf16_with_fp32_only_int8():
    stages, skipped = casestudy.plan("int8-dynamic-legacy")
    assert [s.name for s in stages] == ["baseline", "+ INT8", "+ continuous batching", "+ fast attention"]
    assert stages[0] == casestudy.Stage("baseline")  # fp32, eager, generate
    assert (stages[2].server, stages[2].attention) == ("engine", "eager")
    assert (stages[3].server, stages[3].attention) == ("engine", "sdpa")
    assert skipped[0]["stage"] == "+ bf16"  # the reason is labkit.techniques.quant's own precondition
    assert skipped[0]["status"] == "skipped: " + quant.unsupported("int8-dynamic-legacy", "cpu", torch.bfloat16)
    assert "needs an fp32 model" in skipped[0]["status"]
    stages, skipped = casestudy.plan("int8-weight-only")
    assert stages[-1].dtype == "bf16" and not skipped
    assert [s.guide_factor for s in stages] == [None, 2.3, 1.8, 1.4, None]
    with pytest.raises(ValueError, match="unknown extra"):
        casestudy.plan("int8-weight-only", extras=["fp8"])


def _row(stage, thr, idle, loaded, prev=None, base=None):
    """A stage row as `measure` gives it (here a single round, so each factor is one ratio)."""
    r = {"stage": stage, "output_throughput": thr, "ttft_idle_ms": idle, "ttft_p50_ms": loaded}
    base = base or prev
    if prev:
        r["throughput_x_prev"] = thr / prev["output_throughput"]
    if base:
        r.update({"throughput_x_base": thr / base["output_throughput"], "ttft_idle_x_base": base["ttft_idle_ms"] / idle,
                  "ttft_loaded_x_base": base["ttft_p50_ms"] / loaded})
    return r


def test_check_computes_ratios_and_says_what_failed():
    b = _row("baseline", 10.0, 2000.0, 9000.0)
    q = _row("+ INT8", 30.0, 400.0, 3000.0, b)
    f = _row("+ fast attention", 45.0, 390.0, 1000.0, q, base=b)
    ppl = [{"stage": s, "ppl_delta_pct": d} for s, d in (("baseline", 0.0), ("+ INT8", 0.5), ("+ fast attention", 0.5))]
    r = casestudy.check([b, q, f], ppl, {"int8": True, "bf16": True}, "cpu")
    assert r["final_stage"] == "+ fast attention"
    assert r["throughput_ratio"] == pytest.approx(4.5) and r["ttft_idle_ratio"] == pytest.approx(2000 / 390)
    assert r["ttft_loaded_ratio"] == pytest.approx(9.0) and r["passed"] and r["asserted"]
    slow = _row("+ fast attention", 35.0, 390.0, 1000.0, q, base=b)
    bad_ppl = [dict(p, ppl_delta_pct=1.5) if p["stage"] == "+ fast attention" else p for p in ppl]
    r = casestudy.check([b, q, slow], bad_ppl, {"int8": False, "bf16": False}, "cpu")
    assert not r["passed"] and not r["asserted"]
    assert "throughput 3.50x < 4.0x" in r["message"] and "perplexity +1.50%" in r["message"]
    assert "Not asserted" in r["message"]
    assert casestudy.check([b, q, slow], ppl, {"int8": False, "bf16": False}, "cuda")["asserted"]


def test_an_extra_stage_counts_only_if_it_beats_the_one_before_beyond_noise():
    b = _row("baseline", 10.0, 2000.0, 9000.0)
    f = _row("+ fast attention", 40.0, 400.0, 1000.0, b)
    assert casestudy.final_stage([b, f, _row("+ bf16", 41.0, 380.0, 900.0, f)])["stage"] == "+ fast attention"
    assert casestudy.final_stage([b, f, _row("+ bf16", 48.0, 380.0, 900.0, f)])["stage"] == "+ bf16"


@pytest.fixture(scope="module")
def measured():
    """The embedded model through fp32 stages (so tokens must match) and the legacy INT8 path."""
    base = models.load(models.EMBEDDED, attn_implementation="eager")
    trace = workload.make_trace(3, prompt_len=24, output_len=(3, 6), arrival="all-at-once",
                                vocab_size=base.config.vocab_size, seed=0)
    stages = [casestudy.Stage("baseline"), casestudy.Stage("+ continuous batching", server="engine"),
              casestudy.Stage("+ fast attention", server="engine", attention="sdpa")]
    if torch.backends.quantized.engine in ("x86", "fbgemm", "onednn"):
        stages.insert(1, casestudy.Stage("+ INT8", int8="int8-dynamic-legacy"))
    rows, replays, stage_models, raw = casestudy.measure(stages, base, trace, max_batch=2, idle_repeats=2,
                                                         rounds=3, progress=False)
    return base, trace, stages, rows, replays, stage_models, raw


def test_measure_runs_every_stage_on_the_same_trace_in_rotating_rounds(measured):
    base, trace, stages, rows, replays, _, raw = measured
    assert [r["stage"] for r in rows] == [s.name for s in stages]
    for r in rows:
        assert r["output_throughput"] > 0 and r["ttft_idle_ms"] > 0 and r["ttft_cold_ms"] > 0
        assert len(replays[r["stage"]][1]) == len(trace)
        assert [len(o) for o in replays[r["stage"]][1]] == [q.output_len for q in trace]
    rep, idle = raw["replay"]["values"], raw["idle"]["values"]
    for prev, r in zip(rows, rows[1:], strict=False):  # factors are medians of ratios within each round
        per_round = [b / a for a, b in zip(rep[prev["stage"]]["throughput"], rep[r["stage"]]["throughput"],
                                           strict=True)]
        assert len(per_round) == 3 and r["throughput_x_prev"] == pytest.approx(sorted(per_round)[1])
        per_round = [a / b for a, b in zip(idle[prev["stage"]]["ttft"], idle[r["stage"]]["ttft"], strict=True)]
        assert len(per_round) == 2 and r["ttft_idle_x_prev"] == pytest.approx(statistics.median(per_round))
        assert r["throughput_x_base_rounds"] and r["failed"] == 0
    # one prefill-shaped matmul per compute type, timed in the idle rounds beside the stages
    cfg = base.config
    assert set(raw["kernels"]) == {casestudy.compute_dtype(s) for s in stages}
    for dt, k in raw["kernels"].items():
        assert len(k["s"]) == 2 and min(k["s"]) > 0 and k["flops"] == 2 * 24 * cfg.hidden_size * cfg.intermediate_size
        assert idle[f"matmul {dt}"]["kernel_s"] == k["s"]
        assert all(best < whole / 2.5 for best, whole in zip(k["s"], idle[f"matmul {dt}"]["s"], strict=True))
    # fp32 stages compute the same function: the engine's greedy tokens equal generate's, request by request
    assert replays["+ continuous batching"][1] == replays["baseline"][1]
    assert replays["+ fast attention"][1] == replays["baseline"][1]


def test_projection_scales_by_flops_and_bytes(measured):
    base, trace, stages, rows, _, stage_models, _ = measured
    cfg = base.config  # the embedded model's dimensions as a shape with twice its layers
    spec = models.ShapeSpec("embedded-x2", "llama", cfg.hidden_size, cfg.intermediate_size,
                            2 * cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
                            cfg.vocab_size, cfg.max_position_embeddings, 10000.0,
                            tie_word_embeddings=cfg.tie_word_embeddings)
    card = roofline.Card("test", 16.0, 50.0, {"fp32": 0.2, "bf16": 0.8, "int8": 1.6}, "test")
    proj = casestudy.project(rows, stage_models, spec, cfg.num_hidden_layers, trace, 2, card)
    flops_x = roofline.forward_flops(spec, 24) / roofline.forward_flops(spec, 24, layers=cfg.num_hidden_layers)
    assert 1.0 < flops_x < 2.0
    for r, p in zip(rows, proj, strict=True):
        assert p["ttft_idle_ms_full"] == pytest.approx(r["ttft_idle_ms"] * flops_x)
        assert p["output_throughput_full"] < r["output_throughput"]  # twice the layers: more bytes per step
        assert p["ttft_floor_ms_full"] > 0 and p["throughput_ceiling_full"] > 0


def test_answers_of_fp32_stages_are_identical_to_the_baseline():
    stages = [casestudy.Stage("baseline"), casestudy.Stage("+ continuous batching", server="engine"),
              casestudy.Stage("+ fast attention", server="engine", attention="sdpa")]
    ids = models.prompt_ids(40, batch=3, tokenizer=models.load_tokenizer(), seed=1)
    prompts = [ids[0, :40].tolist(), ids[1, :17].tolist(), ids[2, :29].tolist()]
    rows = casestudy.answer_agreement(stages, prompts, new_tokens=8, max_batch=3, progress=False)
    assert [(r["identical"], r["agree_until"], r["identical_to_prev"]) for r in rows] == [(1.0, 1.0, 1.0)] * 3


def test_report_is_headed_by_the_case_study(tmp_path, monkeypatch):
    from labkit.core import records
    from labkit.course import report

    monkeypatch.setenv("LABKIT_REPORTS", str(tmp_path))
    b = _row("baseline", 10.0, 2000.0, 9000.0)
    f = _row("+ fast attention", 45.0, 390.0, 1000.0, b)
    stages = [b, f, {"stage": "+ bf16", "status": "skipped: needs fp32"}]
    records.save("07_case_study", {"preset": "ci"}, {"passed": True, "asserted": True, "message": "4.50x",
                                                     "stages": stages, "quality": [{"stage": "baseline",
                                                                                    "perplexity": 28.8}]},
                 root=tmp_path / "results")
    records.save("00_baseline", {"preset": "ci"}, {"ttft_ms": 1.0}, root=tmp_path / "results")
    page = report.write_index(tmp_path).read_text()
    assert page.index("Case study") < page.index("<h2>Machine")
    assert "(passed)" in page and "skipped: needs fp32" in page and "28.8" in page and "4.5" in page


def test_plan_takes_only_int8_methods():
    for method in ("int4-rtn", "bnb-nf4", "int9"):
        with pytest.raises(ValueError, match="takes an INT8 method"):
            casestudy.plan(method)


def test_pick_int8_times_each_method_in_every_dtype_it_accepts(tiny_llama, monkeypatch):
    monkeypatch.setattr(casestudy.int8, "ELIMINATE_ABOVE", 1e9)  # no variant out after its probe: all are timed
    prompt = torch.randint(3, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    method, rows = casestudy.pick_int8(tiny_llama, prompt, ["int8-dynamic-legacy", "int8-dynamic"], new_tokens=3,
                                       output_len=8, rounds=2, progress=False)
    variants = {(r["method"], r["dtype"]) for r in rows if r["status"] == "ok"}
    # quantize_dynamic needs fp32 (quant.unsupported), torchao's int8 takes bf16 too
    assert variants == {("int8-dynamic-legacy", "fp32"), ("int8-dynamic", "fp32"), ("int8-dynamic", "bf16")}
    best = min((r for r in rows if r["status"] == "ok"), key=lambda r: r["request_s"])
    assert method == best["method"] and all(r["picked"] == (r["method"] == method) for r in rows)


def test_a_candidate_whose_kernel_is_far_too_slow_is_never_quantized(tiny_llama, monkeypatch):
    monkeypatch.setattr(casestudy.int8, "kernel_rates", lambda model, candidates, dev: {
        "int8-dynamic-legacy": (2e11, "fbgemm"), "int8-dynamic": (1e6, "torch._int_mm")})
    real, quantized = quant.quantize, []
    monkeypatch.setattr(quant, "quantize", lambda model, method: quantized.append(method) or real(model, method))
    prompt = torch.randint(3, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    method, rows = casestudy.pick_int8(tiny_llama, prompt, ["int8-dynamic", "int8-dynamic-legacy"], new_tokens=3,
                                       output_len=8, rounds=1, progress=False)
    assert method == "int8-dynamic-legacy" and quantized == ["int8-dynamic-legacy"]  # fastest kernel first, alone
    out = [r for r in rows if r["method"] == "int8-dynamic"]
    assert {r["dtype"] for r in out} == {"fp32", "bf16"} and all(r["status"] == "probed only" for r in out)
    assert all(r["why_not"].startswith("out before quantizing") and "torch._int_mm" in r["why_not"] for r in out)
    # the estimate in the row is the prefill FLOPs at the kernel's measured rate
    est = casestudy.int8.linear_flops(tiny_llama) * 16 / 1e6
    assert f"~{est:,.0f} s" in out[0]["why_not"]


def test_a_stage_at_its_ceiling_projects_to_the_full_ceiling(measured):
    """Prefill scaled by FLOPs and decode by bytes, apart: a stage measured exactly at its floors projects exactly
    to the full model's floors (scaling a whole replay by the byte ratio, as before, gave fractions up to 3.4)."""
    base, trace, stages, rows, _, stage_models, _ = measured
    cfg = base.config
    spec = models.ShapeSpec("embedded-x3", "llama", cfg.hidden_size, cfg.intermediate_size,
                            3 * cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
                            cfg.vocab_size, cfg.max_position_embeddings, 10000.0)
    card = roofline.Card("test", 16.0, 50.0, {"fp32": 0.2, "bf16": 0.8, "int8": 1.6}, "test")
    first = casestudy.project(rows, stage_models, spec, cfg.num_hidden_layers, trace, 2, card)
    at_floor = [dict(r, ttft_idle_ms=p["ttft_fraction_of_floor"] * r["ttft_idle_ms"],
                     output_throughput=p["throughput_ceiling"]) for r, p in zip(rows, first, strict=True)]
    for p in casestudy.project(at_floor, stage_models, spec, cfg.num_hidden_layers, trace, 2, card):
        assert p["fraction_of_ceiling"] == pytest.approx(1.0)
        assert p["fraction_of_ceiling_full"] == pytest.approx(1.0)
        assert p["ttft_fraction_of_floor"] == pytest.approx(1.0)


def test_pick_prefers_a_batch_invariant_path_within_the_slack(monkeypatch):
    times = {"int8-dynamic-legacy": 1.0, "int8-weight-only": 1.4}
    monkeypatch.setattr(quant, "quantize", lambda model, method: method)
    monkeypatch.setattr(casestudy.int8, "generate_timed", lambda q, prompt, n: (
        type("T", (), {"ttft": times[q], "tpot": 0.0})(), None))
    model = torch.nn.Linear(2, 2)
    method, rows = casestudy.pick_int8(model, None, list(times), rounds=1, progress=False)
    assert method == "int8-weight-only"  # 1.4x slower but batch-invariant: preferred
    legacy = next(r for r in rows if r["method"] == "int8-dynamic-legacy" and r["dtype"] == "fp32")
    assert "answers depend on batch neighbours" in legacy["why_not"]
    times["int8-weight-only"] = 2.0  # now 2x slower: the batch-dependent path wins, and says what it costs
    method, rows = casestudy.pick_int8(model, None, list(times), rounds=1, progress=False)
    assert method == "int8-dynamic-legacy"
    assert "batch-dependent" in next(r for r in rows if r["picked"])["note"]
    note = next(r for r in rows if r["picked"])["note"]
    assert "every batch-invariant path timed here is more than 1.5x slower" in note
    method, rows = casestudy.pick_int8(model, None, ["int8-dynamic-legacy"], rounds=1, progress=False)
    assert "no batch-invariant path was timed here (int8-weight-only not among" in rows[0]["note"]


def test_a_ratio_is_asserted_only_where_the_machines_ceiling_clears_the_bar_with_margin():
    b = _row("baseline", 10.0, 2000.0, 9000.0)
    f = _row("+ fast attention", 45.0, 480.0, 1000.0, b)  # idle TTFT 4.17x, throughput 4.5x
    ppl = [{"stage": s, "ppl_delta_pct": 0.1} for s in ("baseline", "+ fast attention")]
    units = {"int8": True, "bf16": True}
    # prefill floors 2,000 ms and 400 ms: a TTFT ceiling of 5x, under 2 x 4.0 = 8x; throughput ceilings 12x apart
    proj = [{"stage": "baseline", "ttft_fraction_of_floor": 1.0, "throughput_ceiling": 10.0},
            {"stage": "+ fast attention", "ttft_fraction_of_floor": 400 / 480, "throughput_ceiling": 120.0}]
    r = casestudy.check([b, f], ppl, units, "cpu", proj)
    assert r["ceilings"] == pytest.approx({"ttft": 5.0, "throughput": 12.0})
    assert r["asserted"] and r["asserted_ratios"] == ["output throughput"] and r["asserted_passed"] and r["passed"]
    assert "Idle TTFT not asserted: this machine's ceiling for it is 5.0x" in r["message"]
    assert r["ceilings"] == casestudy.ceilings([b, f], proj)
    slow = _row("+ fast attention", 30.0, 480.0, 1000.0, b)  # throughput 3x: asserted, so it fails
    r = casestudy.check([b, slow], ppl, units, "cpu", proj)
    assert not r["asserted_passed"] and "output throughput 3.00x < 4.0x" in r["message"]
    tight = _row("+ fast attention", 45.0, 600.0, 1000.0, b)  # idle TTFT 3.33x: not met, but not asserted here
    r = casestudy.check([b, tight], ppl, units, "cpu", proj)
    assert r["asserted_passed"] and not r["passed"] and "idle TTFT 3.33x lower < 4.0x" in r["message"]
    proj[1]["ttft_fraction_of_floor"] = 200 / 480  # a floor of 200 ms, a ceiling of 10x: now TTFT is asserted too
    r = casestudy.check([b, f], ppl, units, "cpu", proj)
    assert r["asserted_ratios"] == ["output throughput", "idle TTFT"] and r["asserted_passed"]
    # matmuls timed in the same rounds as the TTFTs decide the TTFT ceiling over the profile's: int8 3x fp32 in
    # the run (per round 2.0, 3.0, 4.0 -> median 3.0), so TTFT is not asserted although the profile said 10x
    b["int8"], f["int8"] = None, "int8-dynamic-onednn"
    kernels = {"fp32": {"kernel": "fp32 F.linear", "flops": 2e12, "s": [2.0, 3.0, 4.0]},
               "int8": {"kernel": "oneDNN int8 linear", "flops": 2e12, "s": [1.0, 1.0, 1.0]}}
    assert casestudy.kernel_ratio([b, f], kernels) == pytest.approx(3.0)
    r = casestudy.check([b, f], ppl, units, "cpu", proj, kernels)
    assert r["ceilings"] == pytest.approx({"ttft": 3.0, "throughput": 12.0})
    assert r["asserted_ratios"] == ["output throughput"]
    assert ("Idle-TTFT ceiling 3.0x: the int8 matmul (oneDNN int8 linear) ran at 2.00 and the fp32 one at 0.67 "
            "TFLOP/s in the same rounds") in r["message"]
    card = roofline.Card("test", 16.0, 50.0, {"fp32": 0.2, "bf16": 0.8, "int8": 1.6}, "profile")
    for k in kernels.values():
        k["shape"] = "512x64 @ (128x64)^T"
    run_card, lines = casestudy.in_run_card(card, kernels)  # the floors take the in-run rates, bandwidth stays
    assert run_card.peak("fp32") == pytest.approx(2e12 / 3.0) and run_card.peak("int8") == pytest.approx(2e12)
    assert run_card.peak("bf16") == card.peak("bf16") and run_card.bandwidth_gbps == 50.0
    assert lines[1] == ("int8 matmul (oneDNN int8 linear, 512x64 @ (128x64)^T): 2.00 TFLOP/s in this run's rounds, "
                        "1.60 in notebook 01's profile")
    assert casestudy.in_run_card(card, None)[0] is card
    assert casestudy.kernel_ratio([b, f], {"fp32": kernels["fp32"]}) is None  # the final stage's type not timed
    # 4.17x measured against that 3.0x ceiling: the contradiction is said, not hidden (and not said at 5x above)
    assert ("The measured idle TTFT ratio (4.17x) is above its ceiling (3.0x): the rates the ceiling divides by were "
            "timed at other moments than the stages") in r["message"]
    assert "above its ceiling" not in casestudy.check([b, f], ppl, units, "cpu", proj)["message"]
    # 3.08x against a 3.0x ceiling is inside the noise floor: reached, not beaten, and no cause is invented
    near = _row("+ fast attention", 45.0, 2000.0 / 3.08, 1000.0, b)
    near["int8"] = "int8-dynamic-onednn"
    msg = casestudy.check([b, near], ppl, units, "cpu", proj, kernels)["message"]
    assert "reached its ceiling (3.00x), inside the ±5% noise floor" in msg and "above its ceiling" not in msg
    # the baseline further from its prefill floor than the final stage (30% against 42%): that is the reason given
    proj[0]["ttft_fraction_of_floor"] = 0.3
    r = casestudy.check([b, f], ppl, units, "cpu", proj, kernels)
    assert ("is above its ceiling (3.0x): the ceiling takes both stages at the same fraction of their prefill floors, "
            "but the baseline reached 30% of its floor and + fast attention 42%") in r["message"]


def test_pick_drops_a_hopeless_variant_after_its_first_request_and_keeps_the_picked_models(monkeypatch):
    times = {"int8-dynamic-legacy": 1.0, "int8-weight-only": 1.1, "int8-dynamic": 9.0}
    calls = []
    monkeypatch.setattr(quant, "quantize", lambda model, method: method)

    def timed(q, prompt, n):
        calls.append(q)
        return type("T", (), {"ttft": times[q], "tpot": 0.0})(), None

    monkeypatch.setattr(casestudy.int8, "generate_timed", timed)
    keep = {}
    method, rows = casestudy.pick_int8(torch.nn.Linear(2, 2), None, list(times), rounds=2, progress=False, keep=keep)
    assert method == "int8-weight-only" and set(keep) == {("int8-weight-only", "fp32"), ("int8-weight-only", "bf16")}
    assert calls.count("int8-dynamic") == 4  # its probe (cold and warm) in each dtype, then out
    assert calls.count("int8-weight-only") == 2 * 2 + 2 * (1 + 2)  # probes, then a cold call and 2 rounds
    out = [r for r in rows if r["method"] == "int8-dynamic"]
    assert all(r["status"] == "probed only" and "ttft_ms" not in r for r in out)
    assert all(r["why_not"].startswith("out after its probe: its request estimated at ~9 s") for r in out)


def test_pick_probes_at_a_short_prompt_and_scales_its_prefill(monkeypatch):
    """The probe runs at PROBE_PROMPT tokens; its prefill is scaled to the full prompt before comparing: a
    variant whose short prefill is 2x slower but whose decode is the same is out only through the scale."""
    seen = []
    per_token = {"int8-dynamic-legacy": 0.01, "int8-dynamic": 0.05}
    monkeypatch.setattr(quant, "quantize", lambda model, method: method)

    def timed(q, prompt, n):
        seen.append((q, prompt.shape[1], n))
        return type("T", (), {"ttft": per_token[q] * prompt.shape[1], "tpot": 0.01})(), None

    monkeypatch.setattr(casestudy.int8, "generate_timed", timed)
    monkeypatch.setattr(quant, "unsupported", lambda *a: "fp32 only")
    prompt = torch.zeros(1, 16 * casestudy.int8.PROBE_PROMPT, dtype=torch.long)
    method, rows = casestudy.pick_int8(torch.nn.Linear(2, 2), prompt, list(per_token), output_len=8, rounds=1,
                                       progress=False)
    assert [s for s in seen if s[0] == "int8-dynamic"] == [("int8-dynamic", casestudy.int8.PROBE_PROMPT, 2)] * 2
    assert ("int8-dynamic-legacy", prompt.shape[1], 8) in seen  # the survivor is timed at the full prompt
    out = next(r for r in rows if r["method"] == "int8-dynamic")
    # estimate: 0.05 s/token x 512 tokens + 7 x 0.01 = 25.7 s, against 5.19 s: over 3x, out
    assert method == "int8-dynamic-legacy" and "~26 s (a 32-token prompt, prefill scaled 16x)" in out["why_not"]


def test_answers_say_whether_the_batch_or_a_near_tie_parts_them():
    stages = [casestudy.Stage("baseline"), casestudy.Stage("+ INT8", int8="int8-dynamic"),
              casestudy.Stage("+ continuous batching", int8="int8-dynamic", server="engine"),
              casestudy.Stage("legacy batched", int8="int8-dynamic-legacy", server="engine")]
    ids = models.prompt_ids(96, batch=6, tokenizer=models.load_tokenizer(), seed=2)
    prompts = [ids[i, : 40 + 9 * i].tolist() for i in range(6)]
    rows = {r["stage"]: r for r in casestudy.answer_agreement(stages, prompts, new_tokens=12, max_batch=6,
                                                              progress=False)}
    assert rows["+ continuous batching"]["identical_alone"] == 1.0  # per-token scales: the batch changes nothing
    assert rows["legacy batched"]["identical_alone"] < 1.0  # one scale per step: it does
    for r in rows.values():
        assert 0 <= r["near_ties"] <= r["parted"] == round((1 - r["identical_to_prev"]) * len(prompts))
        assert (r["max_parting_gap"] is None) == (r["parted"] == 0)


def test_perplexity_is_measured_as_each_stage_serves():
    from labkit import DATA

    stages = [casestudy.Stage("baseline"), casestudy.Stage("+ continuous batching", server="engine"),
              casestudy.Stage("legacy batched", int8="int8-dynamic-legacy", server="engine"),
              casestudy.Stage("legacy alone", int8="int8-dynamic-legacy")]
    rows = {r["stage"]: r for r in casestudy.perplexities(stages, (DATA / "eval" / "heldout.txt").read_text(),
                                                          models.load_tokenizer(), 1100, progress=False)}
    assert rows["baseline"]["served"] == "one window at a time" and "engine" in rows["legacy batched"]["served"]
    # fp32 served in batches: the same windows and tokens, so the same perplexity up to rounding
    assert rows["+ continuous batching"]["perplexity"] == pytest.approx(rows["baseline"]["perplexity"], rel=1e-5)
    # per-tensor int8: the batch's shared scale gives a different number than one window at a time
    assert rows["legacy batched"]["perplexity"] != pytest.approx(rows["legacy alone"]["perplexity"], rel=1e-6)


def test_answers_lines_follow_the_table():
    base = {"stage": "baseline", "server": "sequential"}
    one = {"stage": "+ INT8", "server": "sequential"}
    cb = {"stage": "+ continuous batching", "server": "engine", "identical_alone": 1.0, "identical_to_prev": 0.875,
          "parted": 1, "near_ties": 1, "max_parting_gap": 0.0035}
    lines = casestudy.answers_lines([base, one, cb])
    assert "100%" in lines[0] and "batch-invariant" in lines[0]
    assert "88% identical" in lines[1] and "near-tie" in lines[1] and "not the method" in lines[1]
    cb.update(identical_alone=0.5, near_ties=0)
    lines = casestudy.answers_lines([base, one, cb])
    assert "changes what some requests get back" in lines[0] and "clear margin" in lines[1]
    cb.update(parted=0, identical_to_prev=1.0)
    assert "every answer identical" in casestudy.answers_lines([base, one, cb])[1]


def test_int8_candidates_per_preset_name_what_they_leave_out():
    full, none = casestudy.int8_candidates("full", "cpu")
    assert full == list(casestudy.INT8_CANDIDATES["cpu"])
    assert none == [{"method": "bnb-int8", "status": "not a candidate: " + casestudy.NOT_A_CANDIDATE["bnb-int8"]}]
    ci, out = casestudy.int8_candidates("ci", "cpu")
    out = [r for r in out if "not a candidate" not in r["status"]]
    assert set(ci) | {r["method"] for r in out} == set(full) and not set(ci) & {r["method"] for r in out}
    assert all(m.startswith("int8-dynamic") for m in ci) and all("not measured" in r["status"] for r in out)
    _, cuda_out = casestudy.int8_candidates("full", "cuda")  # every INT8 method has a row: measured or why not
    assert {r["method"] for r in cuda_out} == {"int8-dynamic-onednn", "int8-dynamic-legacy"}
    assert all("not a candidate" in r["status"] and "CPU" in r["status"] for r in cuda_out)
    per_token = "int8-dynamic-onednn" if hardware.onednn_unsupported("cpu") is None else "int8-dynamic"
    assert sorted(ci) == sorted([per_token, "int8-dynamic-legacy"])


def test_settings_fill_the_preset_and_reject_bad_values():
    from labkit.core.params import ParamError

    ci, full = casestudy.settings("ci", model="llama-2-13b"), casestudy.settings("full", model="llama-2-13b")
    assert ci.device in ("cpu", "cuda") and ci.n_requests < full.n_requests and ci.output_len < full.output_len
    assert ci.layers <= full.layers <= models.shape("llama-2-13b").num_hidden_layers
    assert ci.rate is None and full.ppl_tokens is None  # all at once: no rate; full: every held-out token
    assert (ci.int8_candidates, ci.left_out) == tuple(casestudy.int8_candidates("ci", ci.device))
    assert ci.int8 is None and ci.extras == list(casestudy.EXTRAS)  # None: every extra stage
    given = casestudy.settings("ci", model="llama-2-13b", device="cpu", arrival="poisson", rate=0.5, layers=2,
                               int8="int8-dynamic", int8_candidates=["int8-dynamic"], extras=[])
    assert (given.rate, given.layers, given.int8, given.int8_candidates, given.extras) == (
        0.5, 2, "int8-dynamic", ["int8-dynamic"], [])
    assert casestudy.settings("ci", model="llama-2-13b", device="cpu", arrival="poisson").rate > 0  # a default rate
    too_deep = models.shape("llama-2-13b").num_hidden_layers + 1
    for bad, what in (({"model": "gpt-9"}, "model"), ({"layers": too_deep}, "layers"), ({"int8": "int4-rtn"}, "int8"),
                      ({"extras": ["fp8"]}, "extras"), ({"arrival": "bursty"}, "arrival"),
                      ({"max_batch": 0}, "max_batch")):
        with pytest.raises(ParamError, match=what):
            casestudy.settings("ci", **{"model": "llama-2-13b", "device": "cpu", **bad})


def _stage_table():
    import pandas as pd

    b = _row("baseline", 10.0, 2000.0, 9000.0)
    f = _row("+ fast attention", 45.0, 390.0, 1000.0, b)
    ok = [{**r, "status": "ok"} for r in (b, f)]
    return pd.DataFrame(ok + [{"stage": "+ bf16", "status": "skipped: needs fp32"}])


def test_the_stage_figure_draws_every_measured_stage_and_no_skipped_one():
    import matplotlib.pyplot as plt

    table = _stage_table()
    fig = casestudy.plot_stages(table)
    ok = table[table["status"] == "ok"]
    assert len(fig.axes) == 3
    for ax, column in zip(fig.axes, ["output_throughput", "ttft_idle_ms", "ttft_p50_ms"], strict=True):
        assert [p.get_height() for p in ax.patches] == ok[column].tolist()
        assert [t.get_text() for t in ax.get_xticklabels()] == ok["stage"].tolist()
    plt.close(fig)


def test_table_views_keep_the_record_keys_and_only_rename_for_reading():
    table = _stage_table()
    view = casestudy.stages_view(table)
    assert view.columns.tolist()[:3] == ["stage", "status", "ttft_idle_ms"] and "guide_factor" in view.columns
    assert view["stage"].tolist() == table["stage"].tolist()  # skipped stages are listed, with their reason
    ok = table[table["status"] == "ok"].to_dict("records")
    ppl = [{"stage": r["stage"], "ppl_delta_pct": 0.1 * i} for i, r in enumerate(ok)]
    proj = [{"stage": r["stage"], "prefill_share": 0.5, "throughput_ceiling": 2 * r["output_throughput"]} for r in ok]
    case = casestudy.case_table(ok, ppl, proj)
    assert case["stage"].tolist() == [r["stage"] for r in ok]
    stack = casestudy.stack_view(case)
    assert stack["tok/s"].tolist() == [r["output_throughput"] for r in ok]
    assert stack["ceiling tok/s"].tolist() == [2 * r["output_throughput"] for r in ok]
    assert stack["perplexity %"].tolist() == [p["ppl_delta_pct"] for p in ppl]
    full = casestudy.full_depth_view(case, 48)  # headers name the full model's depth
    assert full["prefill share"].tolist() == [0.5, 0.5] and full["48-layer tok/s"].isna().all()  # not projected
    guide = casestudy.GUIDE
    assert f"{guide['throughput'][0]} -> {guide['throughput'][1]} tok/s" in casestudy.guide_line()



# ---------------------------------------------------------------- best here: what pays most on this machine

def test_best_here_is_on_by_default_only_without_matrix_units():
    from labkit.core.params import ParamError

    none, vnni, gpu = {"int8": False, "bf16": False}, {"int8": True, "bf16": False}, {"int8": True, "bf16": True}
    on, why = casestudy.best_here_wanted(None, "cpu", none)
    assert on and "no int8 or bf16 matrix units" in why
    on, why = casestudy.best_here_wanted(None, "cpu", vnni)
    assert not on and "this CPU has int8 matrix units" in why and "best_here=true" in why
    assert not casestudy.best_here_wanted(None, "cuda", none)[0]
    assert casestudy.best_here_wanted(True, "cpu", gpu)[0] and not casestudy.best_here_wanted(False, "cpu", none)[0]
    with pytest.raises(ParamError, match="best_here"):
        casestudy.best_here_wanted("yes", "cpu", none)
    units = hardware.matrix_units()  # this machine: on only where it has neither kind of unit
    auto = casestudy.settings("full", model="llama-2-13b", device="cpu")
    assert auto.best_here == (not units["int8"] and not units["bf16"]) and auto.best_here_why
    assert casestudy.settings("ci", model="llama-2-13b", device="cpu", best_here=True).best_here


def test_best_candidates_leave_out_the_stacks_twins_and_what_cannot_run(tiny_llama, monkeypatch):
    stages, _ = casestudy.plan("int8-weight-only")  # its '+ fast attention' is int8-weight-only fp32, engine, SDPA
    cache: dict = {}
    methods = (("int8-weight-only", "fp32"), ("int8-dynamic-legacy", "bf16"), (None, "fp32"))
    out, skipped = casestudy.best_candidates(stages, tiny_llama, cache, "cpu", methods)
    assert [s.name for s in out] == [casestudy.candidate_name(None, "fp32")]
    assert (out[0].server, out[0].attention, out[0].int8, out[0].dtype) == ("engine", "sdpa", None, "fp32")
    assert skipped[0] == {"stage": casestudy.candidate_name("int8-weight-only", "fp32"),
                          "status": "measured as the stack's '+ fast attention'"}
    assert skipped[1]["status"] == "skipped: " + quant.unsupported("int8-dynamic-legacy", "cpu", torch.bfloat16)
    assert set(cache) == {(None, "fp32")}  # the measured candidates' models are built now, for `measure`

    def refuse(model, method):
        raise quant.QuantSkipped("no kernel for it here")

    monkeypatch.setattr(quant, "quantize", refuse)  # a method that fails while quantizing is a row, not a crash
    out, skipped = casestudy.best_candidates(stages[:1], tiny_llama, {}, "cpu", (("int4-rtn", "bf16"),))
    assert out == [] and skipped[0]["status"] == "skipped: no kernel for it here"


@pytest.fixture(scope="module")
def best_measured(tiny_llama):
    """The stack's baseline and fast-attention stage with two best-here candidates, on a tiny model, forced on."""
    trace = workload.make_trace(3, prompt_len=16, output_len=(3, 5), arrival="all-at-once", vocab_size=256, seed=0)
    stages = [casestudy.Stage("baseline"), casestudy.Stage("+ fast attention", server="engine", attention="sdpa")]
    cache: dict = {}
    assert casestudy.best_here_wanted(True, "cpu", hardware.matrix_units())[0]
    cands, skipped = casestudy.best_candidates(stages, tiny_llama, cache, "cpu",
                                               (("int8-weight-only", "fp32"), ("int4-rtn", "bf16"), (None, "fp32")))
    rows, replays, stage_models, raw = casestudy.measure(stages, tiny_llama, trace, max_batch=2, idle_repeats=2,
                                                         rounds=3, progress=False, cache=cache, candidates=cands)
    return trace, stages, cands, skipped, rows, replays, stage_models, raw


def test_best_here_candidates_are_timed_in_the_stacks_rounds_against_its_final_stage(best_measured):
    trace, stages, cands, skipped, all_rows, replays, _, raw = best_measured
    assert [s.name for s in cands] == [casestudy.candidate_name("int8-weight-only", "fp32"),
                                       casestudy.candidate_name("int4-rtn", "bf16")]
    assert skipped[0]["status"] == "measured as the stack's '+ fast attention'"  # plain fp32 is that stage
    rows, best_rows = casestudy.split_best(all_rows)
    assert [r["stage"] for r in rows] == [s.name for s in stages] and casestudy.final_stage(all_rows) == rows[-1]
    rep = raw["replay"]["values"]
    for r in best_rows:
        assert r["best_here"] and r["vs"] == "+ fast attention" and r["server"] == "engine" and r["failed"] == 0
        per = [b / a for a, b in zip(rep["+ fast attention"]["throughput"], rep[r["stage"]]["throughput"],
                                     strict=True)]
        assert r["throughput_x_prev_rounds"] == pytest.approx(per) and len(per) == 3
        assert r["throughput_x_prev"] == pytest.approx(statistics.median(per))
        assert [len(o) for o in replays[r["stage"]][1]] == [q.output_len for q in trace]
    assert {"fp32", "bf16"} <= set(raw["kernels"])  # int4's bf16 matmul timed beside the stack's fp32 one
    w = {r["stage"]: r["weight_bytes"] for r in all_rows}
    assert w[best_rows[1]["stage"]] < w[best_rows[0]["stage"]] < w["+ fast attention"]  # int4 < int8 < fp32


def test_compare_best_on_measured_rows_gives_ceilings_and_a_sentence(best_measured, tiny_llama):
    trace, stages, cands, skipped, all_rows, _, stage_models, _ = best_measured
    rows, best_rows = casestudy.split_best(all_rows)
    cfg = tiny_llama.config
    spec = models.ShapeSpec("tiny-x2", "llama", cfg.hidden_size, cfg.intermediate_size, 2 * cfg.num_hidden_layers,
                            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size,
                            cfg.max_position_embeddings, 10000.0)
    card = roofline.Card("test", 16.0, 50.0, {"fp32": 0.2, "bf16": 0.8, "int8": 1.6}, "test")
    proj = casestudy.project(rows, stage_models, spec, cfg.num_hidden_layers, trace, 2, card)
    best_proj = casestudy.project(best_rows, stage_models, spec, cfg.num_hidden_layers, trace, 2, card)
    ppl = [{"stage": "baseline", "ppl_delta_pct": 0.0}, {"stage": "+ fast attention", "ppl_delta_pct": 0.0}]
    best_ppl = [{"stage": r["stage"], "ppl_delta_pct": 0.4} for r in best_rows]
    best = casestudy.compare_best(rows, proj, ppl, best_rows, best_proj, best_ppl, skipped)
    assert [r["stage"] for r in best["rows"]] == ["+ fast attention", *[r["stage"] for r in best_rows],
                                                  skipped[0]["stage"]]
    fastest = max(best_rows, key=lambda r: r["output_throughput"])
    assert best["fastest"] == fastest["stage"] and best["verdict"] in ("candidate", "stack", "inconclusive")
    for r in best["rows"][:-1]:
        assert r["throughput_ceiling"] > 0 and r["throughput_ceiling_full"] > 0 and r["fraction_of_ceiling"] > 0
    line = casestudy.best_here_line(best)
    assert f"{fastest['output_throughput']:.2f} tok/s" in line and "for this trace here is" in line
    view = casestudy.best_here_view(best, 40)
    assert view["stage"].tolist() == [r["stage"] for r in best["rows"]] and view["run this"].sum() == 1


def test_best_here_perplexity_is_against_the_stacks_baseline():
    from labkit import DATA

    stage = casestudy.Stage(casestudy.candidate_name("int8-weight-only", "fp32"), int8="int8-weight-only",
                            server="engine", attention="sdpa")
    rows = casestudy.perplexities([stage], (DATA / "eval" / "heldout.txt").read_text(), models.load_tokenizer(), 600,
                                  progress=False, baseline=20.0)
    assert rows[0]["ppl_delta_pct"] == pytest.approx(100 * (rows[0]["perplexity"] / 20.0 - 1))


def _best(rounds: list[float], ppl: dict[str, float] | None = None, candidates: int = 2) -> dict:
    """compare_best on fake rows: the stack's final stage at 10 tok/s, candidate A at 10 x the median of `rounds`,
    candidate B at 80% of A; perplexity changes from `ppl` (0.2% each by default)."""
    b = {**_row("baseline", 5.0, 2000.0, 9000.0), "status": "ok", "weight_bytes": 4 * 2**20}
    f = {**_row("+ fast attention", 10.0, 400.0, 900.0, b), "status": "ok", "int8": "int8-dynamic",
         "server": "engine", "attention": "sdpa", "dtype": "fp32", "weight_bytes": 2**20}
    best_rows = []
    for i, (name, method, dtype) in enumerate((("A", "int4-rtn", "bf16"), ("B", "int8-weight-only", "fp32"))):
        scale = 1.0 if i == 0 else 0.8
        per = [x * scale for x in rounds]
        best_rows.append({"stage": name, "status": "ok", "int8": method, "dtype": dtype, "server": "engine",
                          "attention": "sdpa", "output_throughput": 10.0 * statistics.median(per),
                          "throughput_x_prev": statistics.median(per), "throughput_x_prev_rounds": per,
                          "ttft_idle_ms": 500.0, "tpot_p50_ms": 50.0, "weight_bytes": 2**19, "best_here": True})
    best_rows = best_rows[:candidates]
    proj = [{"stage": s, "throughput_ceiling": 40.0, "fraction_of_ceiling": 0.25, "output_throughput_full": 1.0,
             "throughput_ceiling_full": 4.0} for s in ("baseline", "+ fast attention", "A", "B")]
    ppl = ppl or {}
    ppl_rows = [{"stage": s, "ppl_delta_pct": ppl.get(s, 0.2)} for s in ("baseline", "+ fast attention")]
    best_ppl = [{"stage": r["stage"], "ppl_delta_pct": ppl.get(r["stage"], 0.2)} for r in best_rows]
    skipped = [{"stage": "C", "status": "skipped: no kernel"}]
    return casestudy.compare_best([b, f], proj[:2], ppl_rows, best_rows, proj[2:], best_ppl, skipped)


def test_compare_best_picks_the_fastest_and_says_by_how_much_it_beats_the_stack():
    best = _best([1.4, 1.5, 1.45])
    assert (best["fastest"], best["verdict"], best["pick"]) == ("A", "candidate", "A")
    assert best["x_stack"]["value"] == pytest.approx(1.45) and best["x_stack"]["conclusive"]
    line = casestudy.best_here_line(best)
    assert line.startswith("On this machine, for this trace, run int4-rtn weights, bf16 activations; continuous")
    assert "14.50 tok/s): 1.45x the throughput of the guide's stack ('+ fast attention'" in line
    assert "rounds 1.40-1.50x" in line and "The ceiling of 'A' for this trace here is 40.00 tok/s" in line
    assert "25% reached" in line and "projects to 1.00 tok/s against a ceiling of 4.00" in line
    assert "Perplexity +0.20% against the fp32 baseline (the guide's stack: +0.20%), within ±1.0%" in line
    rows = {r["stage"]: r for r in best["rows"]}
    assert rows["A"]["picked"] and not rows["+ fast attention"]["picked"] and rows["C"]["status"].startswith("skip")
    assert rows["+ fast attention"]["config"] == ("int8-dynamic (int8 weights and activations); continuous "
                                                  "batching, SDPA attention")


@pytest.mark.parametrize("rounds, verdict, says", [
    ([0.98, 1.03, 1.02], "inconclusive", "Inconclusive inside the noise: the fastest alternative"),
    ([1.3, 0.9, 1.2], "inconclusive", "rounds 0.90-1.30x"),  # beyond the noise, but the rounds disagree
    ([0.5, 0.6, 0.55], "stack", "keep the guide's stack ('+ fast attention'"),
    ([0.5, 0.6, 0.55], "stack", "the fastest alternative, int4-rtn weights, bf16 activations; continuous batching, "
                                "SDPA attention ('A', 5.50 tok/s), reached 0.55x its throughput (rounds 0.50-0.60x)")])
def test_compare_best_keeps_the_stack_where_no_candidate_beats_it_beyond_the_noise(rounds, verdict, says):
    best = _best(rounds)
    assert best["verdict"] == verdict and best["pick"] == "+ fast attention" and best["fastest"] == "A"
    line = casestudy.best_here_line(best)
    assert says in line and "The ceiling of '+ fast attention'" in line  # of what to run: the stack's


def test_compare_best_names_a_faster_config_within_the_perplexity_tolerance():
    best = _best([1.4, 1.5, 1.45], ppl={"A": 3.0})
    assert best["fastest"] == "A" and best["fastest_within_ppl"] == "B"
    line = casestudy.best_here_line(best)
    assert "Perplexity +3.00% against the fp32 baseline" in line and "outside ±1.0%" in line
    assert "the fastest within it is int8-weight-only weights, fp32 activations" in line and "('B', 11.60" in line
    best = _best([1.4, 1.5, 1.45], ppl={"A": 3.0, "B": 2.0, "+ fast attention": 1.5})
    assert best["fastest_within_ppl"] is None
    assert "no configuration measured here stays within it" in casestudy.best_here_line(best)


def test_best_here_reaches_the_check_message_what_this_means_and_the_view():
    best = _best([1.4, 1.5, 1.45])
    stack = [r for r in best["rows"] if r.get("stack")]
    b = _row("baseline", 5.0, 2000.0, 9000.0)
    f = _row("+ fast attention", 10.0, 400.0, 900.0, b)
    ppl = [{"stage": "baseline", "ppl_delta_pct": 0.0}, {"stage": "+ fast attention", "ppl_delta_pct": 0.2}]
    msg = casestudy.check([b, f], ppl, {"int8": False, "bf16": False}, "cpu", best=best)["message"]
    assert "Not asserted: this machine has no int8 or bf16 matrix units" in msg
    assert msg.endswith("Best on this machine: " + casestudy.best_here_line(best).rstrip("."))
    assert "Best on this machine" not in casestudy.check([b, f], ppl, {"int8": False, "bf16": False}, "cpu")["message"]
    text = casestudy.what_this_means([b, f], ppl, [], False, best)
    assert "* **Best on this machine**: On this machine, for this trace, run int4-rtn" in text
    assert "Best on this machine" not in casestudy.what_this_means([b, f], ppl, [], False)
    view = casestudy.best_here_view(best, 40)
    assert "40-layer tok/s" in view.columns and "{n}-layer tok/s" not in view.columns
    assert view["stage"].tolist() == ["+ fast attention", "A", "B", "C"] and stack[0]["stage"] == "+ fast attention"
    assert view["x guide's stack"].tolist()[:3] == [1.0, 1.45, pytest.approx(1.16)]
    assert view["run this"].tolist()[:3] == [False, True, False]
    none = _best([1.4], candidates=0)
    assert none["verdict"] == "none" and none["pick"] == "+ fast attention" and casestudy.best_here_line(none) is None


def test_the_ci_preset_leaves_best_here_out_and_says_what_it_would_cost_here():
    none = {"int8": False, "bf16": False}
    on, why = casestudy.best_here_wanted(None, "cpu", none, "ci")
    assert not on and "ci preset" in why and "best_here=true" in why
    assert casestudy.best_here_wanted(None, "cpu", none, "full")[0]
    assert casestudy.best_here_wanted(True, "cpu", none, "ci")[0]  # forced on, it runs in ci too
    rows = [{"stage": "baseline", "status": "ok", "output_throughput": 5.0}, {"stage": "+ INT8", "status": "ok",
                                                                              "output_throughput": 10.0}]
    line = casestudy.best_here_cost(rows, 8 * 32, 2)
    n = len(casestudy.BEST_CANDIDATES)
    assert f"{n} x 2 more times" in line and f"~{n * 2 * 256 / 5.0:.0f} s here" in line and "51 s per replay" in line
    assert "no stage was measured" in casestudy.best_here_cost([{"stage": "baseline", "status": "skipped"}], 10, 2)


def test_a_budget_cut_of_the_replay_rounds_is_said_with_the_budget_that_runs_them_all():
    raw = {"replay": {"names": ["baseline"], "values": {"baseline": {"s": [100.0]}}, "asked": 2, "round_s": 116.0}}
    line = casestudy.rounds_line(raw, 300.0)
    assert line.startswith("trace replayed in 1 of 2 rounds to fit -p budget_s=300 (a round of every stage took "
                           "~116 s here)") and line.endswith("-p budget_s=450 for all of them")
    assert "one round's, its spread unknown" in line and casestudy.rounds_done(raw) == 1
    raw["replay"].update(asked=3, values={"baseline": {"s": [100.0, 101.0]}})
    line = casestudy.rounds_line(raw, 300.0)
    assert "2 of 3 rounds" in line and "the median of 2 rounds" in line and "spread unknown" not in line
    raw["replay"].update(asked=2)
    assert casestudy.rounds_line(raw, 300.0) is None
    assert casestudy.replay_deadline(None, 5.0) is None
    assert casestudy.replay_deadline(300.0, 5.0) == 305.0 - casestudy.AFTER_REPLAYS_S
    assert casestudy.settings("ci", model="llama-2-13b", device="cpu").budget_s == casestudy.parameters.BUDGET_CI_S
    assert casestudy.settings("full", model="llama-2-13b", device="cpu").budget_s is None
