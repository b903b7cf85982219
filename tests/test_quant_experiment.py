"""Notebook 02's experiment: rows for every method, ratios from rotating rounds, floors next to the times."""

import pandas as pd
import pytest

from labkit.core import roofline
from labkit.lessons import quantization as qe
from labkit.lessons import quantization_views as qv


def test_benchmark_rows_carry_floors_and_skip_reasons(tiny_llama):
    card = roofline.Card("test", 16.0, 40.0, {"fp32": 0.2, "bf16": 0.8, "int8": 1.6}, "test")
    df = qe.benchmark_methods(tiny_llama, ["int8-dynamic-legacy", "rtn", "gptqmodel"], prompt_len=8, new_tokens=4,
                              repeats=2, progress=False, hw=card)
    rows = {r["method"]: r for _, r in df.iterrows()}
    assert list(rows) == ["fp32", "bf16", "int8-dynamic-legacy", "rtn", "gptqmodel"]
    assert rows["rtn"]["status"].startswith("not timed: fake-quantized")
    assert rows["gptqmodel"]["status"].startswith("skipped: GPTQModel is not installed")
    fp = rows["fp32"]
    assert fp["decode_x_vs_fp32"] == 1.0 and fp["decode_floor_ms"] > 0
    assert fp["decode_fraction"] == pytest.approx(fp["decode_floor_ms"] / fp["decode_ms_per_token"])
    assert rows["int8-dynamic-legacy"]["prefill_compute"] == "int8" and fp["prefill_compute"] == "fp32"
    timed = [r for r in rows.values() if r["status"] == "ok"]
    for key in ("decode_fraction", "prefill_fraction"):  # none above 1.05 of its floor without the reason
        assert all(not r.get(key, 0) > 1.05 or isinstance(r.get(f"{key}_reason"), str) for r in timed)
    # the int8 copy reads fewer bytes per step than fp32 (its linears are 1 byte per weight)
    assert rows["int8-dynamic-legacy"]["decode_read_mib"] < fp["decode_read_mib"]
    assert qv.skipped(df) == [f"rtn: {rows['rtn']['status']}", f"gptqmodel: {rows['gptqmodel']['status']}"]
    assert list(qv.view(df, qv.SPEED_VIEW)["method"]) == ["fp32", "bf16", "int8-dynamic-legacy"]


def _parts(read: float, flops: float, peak: float, compute: str) -> dict:
    return {"read": read, "flops": flops, "peak": peak,
            "shown": {"decode_read_mib": read / 2**20, "prefill_compute": compute, "head_share": 0.1}}


def test_a_beaten_floor_is_re_derived_with_its_reason_and_prefill_uses_the_paths_own_matmul_rate():
    # a 5 GB/s card: fp32's 100 MB in 10 ms beat its 20 ms floor; int8's 25 MB in 8 ms did not (5 ms floor)
    card = roofline.Card("test", 16.0, 5.0, {"fp32": 0.1, "int8": 1.0}, "test")
    rows = {"fp32": {"decode_ms_per_token": 10.0, "prefill_ms": 100.0},
            "int8-dynamic": {"decode_ms_per_token": 8.0, "prefill_ms": 5.0}}
    parts = {"fp32": _parts(1e8, 1e10, card.peak("fp32"), "fp32"),
             "int8-dynamic": _parts(2.5e7, 1e10, card.peak("int8"), "int8")}
    qe._fractions(rows, parts, card, "a test card")
    fp, i8 = rows["fp32"], rows["int8-dynamic"]
    # decode: fp32 re-derived from the fastest bandwidth any row reached (its own, 10 GB/s): 10 ms, fraction 1
    assert fp["decode_floor_ms"] == pytest.approx(10.0) and fp["decode_fraction"] == pytest.approx(1.0)
    assert "memory bandwidth rate (5.0 GB/s, a test card)" in fp["decode_fraction_reason"]
    assert "re-derived" in fp["decode_fraction_reason"]
    assert i8["decode_fraction"] == pytest.approx(5.0 / 8.0) and "decode_fraction_reason" not in i8
    # prefill: fp32 at its 100 GFLOP/s floor exactly; int8 beat the int8 matmul rate (1 TFLOP/s) it computes in
    assert fp["prefill_fraction"] == pytest.approx(1.0) and "prefill_fraction_reason" not in fp
    assert "int8 matmul rate (1,000.0 GFLOP/s" in i8["prefill_fraction_reason"]
    assert i8["prefill_fraction"] <= 1.05 and i8["prefill_floor_ms"] == pytest.approx(5.0)
    assert all(r[k] <= 1.05 for r in rows.values() for k in ("decode_fraction", "prefill_fraction"))
    assert qv.floor_lines(pd.DataFrame([{"method": m, "status": "ok", **r} for m, r in rows.items()]))[0].startswith(
        "fp32, decode_fraction: measured 10 ms beat its floor of 20 ms")


def test_settings_fill_in_the_preset_and_refuse_bad_parameters():
    from labkit.core.params import ParamError
    from labkit.techniques.quant import METHODS

    kw = dict(model="llama-2-7b", device="cpu", seed=0, bits=4, group_size=128, methods=None, compiled=None,
              layers=None)
    ci, full = qe.settings("ci", **kw), qe.settings("full", **kw)
    assert ci.methods == list(METHODS) and ci.device == "cpu"
    assert (ci.layers, ci.prompt_len, ci.compiled) == (1, 256, ["int8-dynamic"])
    assert (full.layers, full.prompt_len, full.ppl_tokens) == (4, 512, None) and "bf16" in full.compiled
    given = qe.settings("ci", **{**kw, "layers": 3, "methods": ["rtn"], "compiled": ["bf16"]})
    assert (given.layers, given.methods, given.compiled) == (3, ["rtn"], ["bf16"])
    for bad, message in ((dict(bits=5), "bits"), (dict(layers=0), "layers"), (dict(layers=33), "layers"),
                         (dict(model="llama2-7b"), "llama-2-7b"), (dict(compiled=["nope"]), "compiled"),
                         (dict(methods=["int3"]), "choose from"), (dict(group_size=100), "group_size")):
        with pytest.raises(ParamError, match=message):
            qe.settings("ci", **{**kw, **bad})


def test_summary_table_sets_quality_next_to_speed_in_the_quality_order():
    quality = pd.DataFrame([{"method": "fp32", "status": "ok", "bits_per_weight": 32.0, "ppl_vs_fp32": 1.0,
                             "disk_bytes": 2**21},
                            {"method": "rtn", "status": "ok", "bits_per_weight": 4.5, "ppl_vs_fp32": 1.1,
                             "disk_bytes": 2**20}])
    speed = pd.DataFrame([{"method": "rtn+compile", "status": "ok", "decode_x_vs_fp32": 3.0},
                          {"method": "fp32", "status": "ok", "decode_x_vs_fp32": 1.0}])
    t = qv.summary_table(quality, speed)
    assert list(t["method"]) == ["fp32", "rtn", "rtn+compile"]
    assert list(t["MiB on disk"].iloc[:2]) == [2.0, 1.0] and t["decode x fp32"].iloc[2] == 3.0


def test_base_dtype_follows_quant_unsupported():
    assert qe.base_dtype("int4-rtn", "cpu") == "bf16"  # torchao's CPU int4 needs bf16: quant.unsupported says so
    assert qe.base_dtype("int8-dynamic-legacy", "cpu", prefer="bf16") == "fp32"  # quantize_dynamic needs fp32
    assert qe.base_dtype("int8-weight-only", "cpu", prefer="bf16") == "bf16"
    assert qe.base_dtype("rtn", "cpu") == "fp32"


def test_prediction_lines_explain_a_big_miss_from_the_fractions():
    speed = pd.DataFrame([{"method": "fp32", "status": "ok", "decode_x_vs_fp32": 1.0, "decode_fraction": 0.5},
                          {"method": "bf16", "status": "ok", "decode_x_vs_fp32": 1.02, "decode_fraction": 0.26}])
    profile = {"predictions": [{"dtype": "fp32", "predicted speed-up vs fp32": 1.0},
                               {"dtype": "bf16", "predicted speed-up vs fp32": 2.46}]}
    line = qv.prediction_lines(speed, profile)[0]
    assert "predicted decode 2.46x fp32" in line and "measured 1.02x" in line
    assert "reached 26% of its bandwidth floor where fp32 reached 50%" in line
    assert qv.prediction_lines(speed, None) == ["no stored profile: run notebook 01 for predictions"]


def test_a_compiled_path_that_gives_wrong_tokens_is_not_timed(tiny_llama, monkeypatch):
    from labkit.techniques import decode

    real = decode.StaticDecoder.generate

    def broken(self, input_ids, new_tokens):  # a "compiled" decoder that answers fast and wrongly
        rt, out = real(self, input_ids, new_tokens)
        if self.compiled:
            out = out.clone()
            out[0, input_ids.shape[1]:] = (out[0, input_ids.shape[1]:] + 7) % 256
        return rt, out

    monkeypatch.setattr(decode.StaticDecoder, "generate", broken)
    df = qe.benchmark_methods(tiny_llama, [], prompt_len=8, new_tokens=4, repeats=1, progress=False,
                              compiled=("fp32",))
    row = df[df["method"] == "fp32+compile"].iloc[0]
    assert row["status"].startswith("wrong tokens: the compiled path's greedy tokens differ from eager's at token 0")
    assert "decode_ms_per_token" not in row or row["decode_ms_per_token"] != row["decode_ms_per_token"]  # NaN


def test_quality_table_has_the_head_only_row():
    from labkit.core import models

    model, tok = models.load(models.EMBEDDED), models.load_tokenizer(models.EMBEDDED)
    text = (models.DATA / "eval" / "heldout.txt").read_text(encoding="utf-8")
    df = qe.evaluate_methods(model, tok, [], calib=None, text=text, max_tokens=256, progress=False)
    assert list(df["method"]) == ["fp32", "bf16", qe.HEAD_INT8]
    head = df.set_index("method").loc[qe.HEAD_INT8]
    assert head["status"] == "ok" and 0.95 < head["ppl_vs_fp32"] < 1.05  # 8-bit head: small, measured cost
    assert head["bytes"] < df.set_index("method").loc["fp32", "bytes"]
    assert list(qe.evaluate_methods(model, tok, [], calib=None, text=text, max_tokens=256, head_int8=False,
                                    progress=False)["method"]) == ["fp32", "bf16"]


# ---------------------------------------------------------------- the time budget: what runs, from each row's probe

from labkit.core import budget  # noqa: E402

FAST, SLOW = budget.RowCost(0.5, 0.1), budget.RowCost(2.0, 1.0)


def _costs(**slow):
    return {"fp32": FAST, "bf16": FAST, "int8": FAST, **{n: SLOW for n in slow}}


def test_everything_runs_when_it_fits_the_budget():
    c = budget.choose(_costs(), 100.0, rounds=2, tokens=8)
    assert (c.rounds, c.main, c.once, c.not_run, c.notes) == (2, ["fp32", "bf16", "int8"], [], {}, {})
    assert c.seconds == c.wanted_s == pytest.approx(2 * 3 * FAST.call_s(8)) and not c.cut
    assert budget.choose(_costs(bnb=1), None, rounds=2, tokens=8).not_run == {}  # no budget: no cut


def test_a_slow_row_is_timed_once_with_the_fewest_tokens_beside_the_references():
    costs = _costs(bnb=1)
    full = 2 * (3 * FAST.call_s(8) + SLOW.call_s(8))
    small = 2 * 3 * FAST.call_s(8) + SLOW.call_s(2) + 2 * FAST.call_s(8)
    c = budget.choose(costs, (full + small) / 2, rounds=2, tokens=8)
    assert c.once == ["bnb"] and c.tokens["bnb"] == budget.MIN_TOKENS and c.rounds == 2 and not c.not_run
    assert c.seconds == pytest.approx(small) and c.wanted_s == pytest.approx(full)
    assert "timed once with 2 of 8 tokens" in c.notes["bnb"] and "budget_s=" in c.notes["bnb"]
    assert set(c.notes) == {"bnb"}  # the rows that ran as asked carry no note


def test_rounds_are_cut_before_any_row_is_dropped_and_dropped_rows_are_listed_with_their_cost():
    costs = _costs(bnb=1, nf4=1)
    one_round = 3 * FAST.call_s(8) + 2 * SLOW.call_s(2) + 2 * FAST.call_s(8)
    c = budget.choose(costs, one_round + 0.01, rounds=3, tokens=8, lesson_budget_s=200)
    assert (c.rounds, sorted(c.once), c.not_run) == (1, ["bnb", "nf4"], {})
    assert "timed in 1 of 3 rounds" in c.notes["int8"]
    tight = budget.choose(costs, 3 * FAST.call_s(8) + 0.01, rounds=3, tokens=8, lesson_budget_s=200)
    assert sorted(tight.not_run) == ["bnb", "nf4"] and tight.main == ["fp32", "bf16", "int8"]
    assert tight.not_run["bnb"] == pytest.approx(3 * SLOW.call_s(8))  # what the preset's sizes would take here
    note = tight.notes["bnb"]
    assert note.startswith("not run here: would take ~") and f"budget_s={budget.suggest_budget(200 + tight.wanted_s)}" \
        in note
    assert budget.suggest_budget(200 + tight.wanted_s) >= 200 + tight.wanted_s


def test_the_references_always_run_and_the_plan_says_when_even_they_do_not_fit():
    c = budget.choose(_costs(bnb=1), 0.1, rounds=2, tokens=8)
    assert c.main == ["fp32", "bf16"] and c.rounds == 1 and set(c.not_run) == {"int8", "bnb"}
    assert c.over and "fp32, bf16" in c.over
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        budget.choose(_costs(), 10, rounds=0, tokens=8)


def test_a_budget_cuts_rows_in_the_benchmark_and_never_reports_them_as_measured(tiny_llama):
    import time

    df = qe.benchmark_methods(tiny_llama, ["int8-dynamic-legacy"], prompt_len=8, new_tokens=4, repeats=2,
                              progress=False, deadline=time.perf_counter(), budget_s=60)
    rows = {r["method"]: r for _, r in df.iterrows()}
    b = df.attrs["budget"]
    assert b["budget_s"] == 0 and b["rounds"] == 1 and list(b["not_run"]) == ["int8-dynamic-legacy"]
    assert rows["int8-dynamic-legacy"]["status"].startswith("not run here: would take ~")
    assert pd_isna(rows["int8-dynamic-legacy"].get("decode_ms_per_token"))
    assert rows["fp32"]["status"] == "ok" and rows["fp32"]["decode_ms_per_token"] > 0
    assert any(line.startswith("budget: 0 s were left") for line in qv.budget_lines(df))
    assert "int8-dynamic-legacy" not in list(qv.view(df, qv.SPEED_VIEW)["method"])
    roomy = qe.benchmark_methods(tiny_llama, ["int8-dynamic-legacy"], prompt_len=8, new_tokens=4, repeats=2,
                                 progress=False, deadline=time.perf_counter() + 600, budget_s=600)
    assert roomy.attrs["budget"]["not_run"] == {} and (roomy["status"] == "ok").all()
    assert qv.budget_lines(roomy)[0].endswith("everything fits")


def pd_isna(v):
    return v is None or bool(pd.isna(v))


def test_the_budget_follows_the_preset_and_is_checked():
    from labkit.core.params import ParamError

    kw = dict(model="llama-2-7b", device="cpu", seed=0, bits=4, group_size=128, methods=None, compiled=None,
              layers=None)
    assert qe.settings("ci", **kw).budget_s == qe.BUDGET_CI_S and qe.settings("full", **kw).budget_s is None
    assert qe.settings("full", **kw, budget_s=900).budget_s == 900
    with pytest.raises(ParamError, match="budget_s"):
        qe.settings("ci", **kw, budget_s=1)
    assert qe.speed_deadline(None, 0.0) is None
    assert qe.speed_deadline(100.0, 5.0) == pytest.approx(5.0 + 100.0 * (1 - qe.AFTER_SPEED_SHARE))


def test_the_budget_probes_eager_rows_at_a_short_prompt_and_scales_their_prefill():
    from labkit.lessons import quantization_timing as qt

    calls = []

    def fake(name, ttft, tpot):
        return lambda t: calls.append((name, t)) or {"ttft": ttft, "tpot": tpot}

    callers = {"fp32": fake("fp32 full", 1.0, 0.1), "x+compile": fake("x+compile full", 2.0, 0.05)}
    probes = {"fp32": fake("fp32 short", 0.125, 0.1)}
    t = qt.time_rows(callers, 2, 4, deadline=__import__("time").perf_counter() + 100, budget_s=100, progress=False,
                     probes=probes, scale=8.0)
    assert calls[:3] == [("fp32 short", 2), ("fp32 short", 2), ("x+compile full", 2)]  # cold + warm; compiled: full
    assert t.probed_short == ("fp32",) and t.cold["fp32"]["ttft"] == 0.125
    assert t.choice.wanted_s == pytest.approx(2 * ((0.125 * 8 + 3 * 0.1) + (2.0 + 3 * 0.05)))  # prefill scaled x8
    calls.clear()
    qt.time_rows(callers, 1, 4, deadline=__import__("time").perf_counter() + 100, budget_s=100, progress=False,
                 probes=probes, scale=8.0, probed={"fp32": ({"s": 0.2, "ttft": 0.1, "tpot": 0.1}, qt.RowCost(1, .1))})
    assert ("fp32 short", 2) not in calls  # a row probed already is not probed again


def test_a_compiled_row_is_set_up_only_when_its_prefills_fit_what_is_left():
    import time

    from labkit.lessons import quantization_timing as qt

    cost = qt.RowCost(prefill_s=20.0, step_s=0.5)
    assert qt.compile_cost("int8-dynamic", cost, time.perf_counter() + 1000, 200) is None  # 100 s of 1000 left
    note = qt.compile_cost("int8-dynamic", cost, time.perf_counter() + 100, 200)
    assert note.startswith("not run here") and f"{qt.SETUP_PREFILLS} full-prompt prefills" in note
    assert "~100 s" in note and "budget_s=300" in note and "~20.0 s each" in note


def test_an_int8_row_whose_kernel_is_far_too_slow_for_the_time_left_is_not_quantized(tiny_llama, monkeypatch):
    """Under a budget, notebook 02 times each INT8 row's int8 kernel first: a row whose kernel is over KERNEL_GAP x
    slower than another's and whose prefills would take over KERNEL_SHARE of the time left is not quantized; its
    row (and its compiled row) says so, with the estimate from the kernel's rate. Close kernels, or enough time,
    and every row is quantized and timed."""
    import time

    from labkit.lessons import quantization_timing as qt
    from labkit.techniques import quant

    flops = qt.linear_flops(tiny_llama) * 8
    slow_rate = flops / 50.0  # a 50-s prefill at this rate
    rates = {"int8-dynamic-legacy": (1e3 * slow_rate, "fbgemm"), "int8-dynamic": (slow_rate, "torch._int_mm")}
    deadline = time.perf_counter() + 400  # 50 s is over a tenth of it
    out = qt.slow_kernels(tiny_llama, list(rates), 8, 2, deadline, 240, "cpu", rates=rates)
    assert list(out) == ["int8-dynamic"] and "~50 s a call" in out["int8-dynamic"]
    assert "torch._int_mm" in out["int8-dynamic"] and "1,000x slower than fbgemm" in out["int8-dynamic"]
    assert "run with -p budget_s=" in out["int8-dynamic"]
    more = int(out["int8-dynamic"].rsplit("=", 1)[1])
    # the suggested budget runs it: a 50-s call within KERNEL_SHARE of the time then left
    assert qt.slow_kernels(tiny_llama, list(rates), 8, 2, deadline + more - 240, more, "cpu", rates=rates) == {}
    close = {"int8-dynamic-legacy": (2 * slow_rate, "fbgemm"), "int8-dynamic": (slow_rate, "torch._int_mm")}
    assert qt.slow_kernels(tiny_llama, list(close), 8, 2, deadline, 240, "cpu", rates=close) == {}
    assert qt.slow_kernels(tiny_llama, list(rates), 8, 2, deadline + 1e4, 240, "cpu", rates=rates) == {}

    monkeypatch.setattr(qt, "kernel_rates", lambda model, methods, dev: rates)
    real, quantized = quant.quantize, []
    monkeypatch.setattr(qe, "quantize", lambda model, method, **kw: quantized.append(method) or real(model, method,
                                                                                                       **kw))
    df = qe.benchmark_methods(tiny_llama, list(rates), prompt_len=8, new_tokens=4, repeats=2, progress=False,
                              compiled=("int8-dynamic",), deadline=time.perf_counter() + 100, budget_s=240)
    rows = {r["method"]: r for _, r in df.iterrows()}
    assert quantized == ["int8-dynamic-legacy"]
    assert rows["int8-dynamic"]["status"].startswith("not run here: its int8 matmul (torch._int_mm)")
    assert pd_isna(rows["int8-dynamic"].get("decode_ms_per_token"))
    assert rows["int8-dynamic+compile"]["status"].startswith("not run here: its eager row")
    assert rows["int8-dynamic-legacy"]["status"] == "ok" and rows["int8-dynamic-legacy"]["decode_ms_per_token"] > 0


def test_a_copy_that_would_not_fit_the_memory_left_is_not_made_and_says_why(tiny_llama, monkeypatch):
    """The rounds hold every row's model at once: a quantized copy that would leave less than MEMORY_SPARE free is
    not made (its row says how much it needs and how much is free), and when even the bf16 reference would not
    fit, the lesson stops with that reason instead of being killed for memory."""
    from labkit.core import hardware
    from labkit.core.models import weight_bytes

    size = weight_bytes(tiny_llama)  # a copy starts as a full fp32 copy (deepcopy, then cast or quantize)
    free = []  # what memory_bytes reports at each check: the bf16 copy's, then the int8 copy's

    monkeypatch.setattr(hardware, "memory_bytes", lambda: {"total": 2**40, "available": int(free.pop(0))})
    free[:] = [qe.MEMORY_SPARE + 1.1 * size] * 2
    runners, rows = qe._speed_runners(tiny_llama, ["int8-weight-only"], progress=False)
    assert rows["int8-weight-only"]["status"] == "ok" and "int8-weight-only" in runners
    free[:] = [qe.MEMORY_SPARE + 0.9 * size]
    with pytest.raises(MemoryError, match="bf16 copy every comparison needs would not fit"):
        qe._speed_runners(tiny_llama, ["int8-weight-only"], progress=False)
    free[:] = [qe.MEMORY_SPARE + 1.1 * size, qe.MEMORY_SPARE + 0.3 * size]  # the copies made so far took the rest
    runners, rows = qe._speed_runners(tiny_llama, ["int8-weight-only"], progress=False)
    status = rows["int8-weight-only"]["status"]
    assert "int8-weight-only" not in runners and status.startswith("not run here: quantizing it starts from a copy")
    base = runners[rows["int8-weight-only"]["base_dtype"]]  # the copy it would start from (fp32 or bf16)
    assert f"({weight_bytes(base) / 2**30:.1f} GiB)" in status and "beside the 2 copies" in status
    assert "-p methods=" in status
