"""Sentences from numbers: each lesson's prose helpers run on synthetic results on both sides of every comparison
they make (A faster, B faster, inside the noise), and the words must follow the numbers (issue #28: "expect TP to
be slower" next to a 1.66x faster TP, "the gain shows in the idle TTFT more than in throughput" next to 1.09x idle
and 1.23x throughput, one cut's quality paired with another cut's speed)."""

import re

import pandas as pd
import pytest

from labkit.core.bench import Ratio
from labkit.lessons import batching as bx
from labkit.lessons import casestudy
from labkit.lessons import kernels as kx
from labkit.lessons import parallelism as pe
from labkit.lessons import pruning as px
from labkit.lessons import quantization_views as qv
from labkit.lessons.casestudy import prose as cs
from labkit.lessons.pruning import tables as pt
from labkit.lessons.pruning.variants import same_cut

FASTER, SLOWER, NOISE = Ratio([1.6, 1.7, 1.66]), Ratio([0.6, 0.62, 0.61]), Ratio([1.02, 0.99, 1.01])
SIDES = {"faster": FASTER, "slower": SLOWER, "noise": NOISE}


# ---------------------------------------------------------------- 03 pruning

@pytest.mark.parametrize("side", SIDES)
def test_03_unstructured_headline_follows_the_ratios(side):
    line = pt.unstructured_line("magnitude 40%", {"magnitude 40%": {"decode": SIDES[side], "prefill": NOISE}}, 0.01)
    assert ("cost the same time" in line) == (side == "noise")
    assert SIDES[side].words() in line


def _structured_row(same: bool) -> dict:
    return {"MiB read per token (speed model)": 100.0, "predicted_decode_x": 1.6, "decode_of_prediction": 1.0,
            "full_depth_predicted_decode_x": 1.7, "ppl_change": 0.3, "ppl_change_after_recovery": None,
            "same cut": same, "achieved (quality model)": "16.7% of layers",
            "achieved (speed model)": "16.7% of layers" if same else "50.0% of layers"}


@pytest.mark.parametrize("side, head", [("faster", "are faster"), ("slower", "were slower"),
                                        ("noise", "not measurably faster")])
def test_03_structured_headline_follows_the_decode_ratio(side, head):
    line = pt.structured_line("layers 17%", _structured_row(True), {"layers 17%": {"decode": SIDES[side],
                                                                                   "prefill": FASTER}})
    assert head in line and "The cost of the same cut on the trained model: perplexity +30.0%" in line


def test_03_quality_and_speed_pair_only_the_same_cut():
    ratios = {"layers 17%": {"decode": FASTER, "prefill": FASTER}}
    line = pt.structured_line("layers 17%", _structured_row(False), ratios)
    assert "of another cut" in line and "50.0% of layers" in line and "same cut on the trained" not in line
    assert same_cut("40.0% of FFN channels", "40.0% of FFN channels")
    assert not same_cut("16.7% of layers", "50.0% of layers")
    quality = pd.DataFrame([{"label": "dense", "status": "ok", "perplexity": 10.0, "ppl_change": 0.0, "achieved": "-"},
                            {"label": "layers 17%", "status": "ok", "perplexity": 13.0, "ppl_change": 0.3,
                             "achieved": "16.7% of layers"}])
    speed = pd.DataFrame([{"label": "dense", "kind": "dense", "status": "ok", "decode_x": 1.0, "achieved": "-"},
                          {"label": "layers 17%", "kind": "structured", "status": "ok", "decode_x": 1.9,
                           "predicted_decode_x": 2.0, "decode_of_prediction": 0.95, "achieved": "50.0% of layers"}])
    _, struct = px.c7_inputs(quality, speed, {"layers 17%": ratios["layers 17%"]}, unstructured_label="magnitude 40%",
                             structured_label="layers 17%")
    assert struct is None  # C7 is never judged on one cut's quality and another's speed
    target = px.targets(quality, speed, {}, structured_label="layers 17%")[0]["measured"]
    assert "not paired" in target and "+30.0%" not in target
    assert not px.summary(quality, speed).set_index("label").loc["layers 17%", "same cut"]


@pytest.mark.parametrize("wins, head", [((False, False), "never beat"), ((False, True), "pays only from 90%")])
def test_03_sweep_headline_follows_the_crossover(wins, head):
    rows = [{"sparsity": s, "tokens": 1, "csr_faster": w, "predicted_csr_x": 1.2, "csr_words": "1.10x slower",
             "csr_of_floor": 0.2, "dense_of_floor": 0.8} for s, w in ((0.5, wins[0]), (0.9, wins[1]))]
    line = pt.sweep_line(pd.DataFrame(rows))
    assert head in line and "below the dense one's" in line


# ---------------------------------------------------------------- 04 parallelism

def _tp_table(tp_vs_solo: str) -> pd.DataFrame:
    rows = []
    for phase in ("prefill", "decode"):
        rows += [{"phase": phase, "run": "one process, all cores", "ms": 100.0, "compute ms": 100.0,
                  "fraction of floor": 0.5, "TP=2 vs this run": tp_vs_solo},
                 {"phase": phase, "run": "one process, one rank's cores", "ms": 190.0, "compute ms": 190.0,
                  "fraction of floor": 0.3, "TP=2 vs this run": FASTER.words()},
                 {"phase": phase, "run": "TP=2", "ms": 60.0, "compute ms": 50.0, "collectives ms": 10.0,
                  "collectives": 4, "MiB through collectives": 1.0, "fraction of floor": 0.8,
                  "TP=2 vs this run": None}]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("side, held", [("slower", "held"), ("faster", "did not hold"), ("noise", "is undecided")])
def test_04_the_prediction_is_checked_against_the_measured_direction(side, held):
    words = SIDES[side].words()
    table = _tp_table(words)
    text = pe.prediction_check(table, {"load": {"busy": True, "others_cpu_share": 0.4}})
    assert f"the prediction {held}" in text and ("Why:" in text) == (side == "faster")
    assert ("40% of the CPU" in text) == (side == "faster")
    line = pe.tp_decode_line(table.iloc[5], table.iloc[3], table.iloc[4])
    assert ("already uses" in line) == (side == "slower") and ("got more from the cores" in line) == (side == "faster")
    assert pe.direction(words) == {"faster": "faster", "slower": "slower", "noise": None}[side]


def test_04_a_beaten_floor_is_explained_not_shown_above_one():
    from labkit.core.models import shape
    from labkit.core.roofline import Card

    table = _tp_table(FASTER.words())
    table["fraction of floor_reason"] = [None, None, "floor re-derived: why"] + [None] * 3
    table.loc[0, "fraction of floor"] = 1.0
    table.loc[0, "fraction of floor_reason"] = "measured 100 ms beat its floor"
    notes = pe.floor_notes(table, shape("llama-2-7b"), 1, Card("t", 16, 10.0, {"fp32": 0.1}, measured=True), 8, 3)
    assert "re-derived: measured 100 ms beat its floor" in notes and "prefill, TP=2, fraction of floor: floor" in notes
    assert "bandwidth probe of notebook 01 reads slower" not in notes


# ---------------------------------------------------------------- 05 continuous batching

def _srv(server: str, tput: list[float], **extra) -> dict:
    return {"server": server, "status": "ok", "throughput_rounds": tput, "output_throughput": sorted(tput)[1],
            **extra}


def _vs_static(ratio: Ratio, **engine) -> list[dict]:
    """Trace rows where the engine's per-round throughput is `ratio` times static's (static 10 tok/s a round)."""
    return [_srv("static", [10.0] * 3), _srv("engine", [10.0 * v for v in ratio.values], **engine)]


@pytest.mark.parametrize("side, says", [("faster", "held: 1.66x higher"), ("slower", "did not hold: 1.64x lower"),
                                        ("noise", "is not settled by this run: inconclusive")])
def test_05_the_throughput_prediction_says_whether_it_held(side, says):
    rows = _vs_static(SIDES[side])
    assert says in bx.prediction_line(rows, "trace 1")
    assert says in bx.what_this_means(rows, [], None, 8)[0]
    assert "could not be checked" in bx.prediction_line(rows[:1], "trace 1")


@pytest.mark.parametrize("engine_p99, says", [(30.0, "That is what chunked prefill predicts"),
                                              (300.0, "here it was not"), (99.0, "this run does not settle it")])
def test_05_itl_lines_follow_the_engines_spread_against_the_others(engine_p99, says):
    rows = [_srv("static", [10.0] * 3, itl_median_ms=10.0, itl_p99_ms=100.0),
            _srv("engine", [10.0] * 3, itl_median_ms=10.0, itl_p99_ms=engine_p99)]
    lines = bx.itl_lines(rows, 96)
    assert lines[0] == f"engine: ITL p99 {engine_p99:.0f} ms is {engine_p99 / 10:.1f}x its median (10 ms)"
    assert says in lines[-1] and "static's (10.0x)" in lines[-1]
    assert ("96 tokens a step" in lines[-1]) == (engine_p99 != 99.0)


@pytest.mark.parametrize("waiting, says", [([0, 0, 0, 0], "No request waited"),
                                           ([0, 3, 2, 0], "Requests waited at 50% of the engine's steps (up to 3")])
def test_05_queue_line_reads_the_engines_waiting_requests(waiting, says):
    occ = {"t": [0.0, 0.1, 0.2, 0.3], "seqs": [2, 4, 6, 8], "waiting": waiting, "tokens": [], "prefill": []}
    line = bx.queue_line(occ, 8)
    assert says in line and "averaged 5.0 of 8 sequences" in line
    assert "not among the servers" in bx.queue_line({"t": [], "seqs": [], "waiting": []}, 8)


@pytest.mark.parametrize("trace2, says", [(NOISE, "held: the lead was 1.64x smaller"),
                                          (Ratio([2.6, 2.7, 2.66]), "did not hold: the lead was 1.60x larger"),
                                          (FASTER, "is not settled by this run")])
def test_05_static_best_case_prediction_follows_both_traces(trace2, says):
    line = bx.best_case_line(_vs_static(FASTER), _vs_static(trace2))
    assert says in line and f"{FASTER.words('higher', 'lower')} on trace 1" in line
    assert "could not be checked" in bx.best_case_line(_vs_static(FASTER), [])


@pytest.mark.parametrize("hi_tput, hi_ttft, says", [(39.0, 500.0, "throughput followed the rate"),
                                                    (15.0, 5000.0, "while requests queued"),
                                                    (15.0, 510.0, "TTFT did not rise"),
                                                    (8.6, 700.0, "throughput fell while requests queued"),
                                                    (10.2, 700.0, "did not grow (inside the noise)")])
def test_05_sweep_lines_say_which_side_of_capacity_each_server_was(hi_tput, hi_ttft, says):
    rows = [{"rate": 1.0, "server": "engine", "status": "ok", "output_throughput": 10.0, "ttft_p99_ms": 500.0},
            {"rate": 4.0, "server": "engine", "status": "ok", "output_throughput": hi_tput, "ttft_p99_ms": hi_ttft},
            {"rate": 4.0, "server": "static", "status": "skipped: no"}]
    (line,) = bx.sweep_lines(rows)
    assert line.startswith(f"engine: 4x the rate (1 to 4 requests/s) gave {hi_tput / 10:.2f}x") and says in line


def test_05_token_costs_give_each_servers_batch():
    occ = {"seqs": [2, 4, 6, 8]}
    lines = bx.token_cost_lines([_srv("sequential", [4.0] * 3), _srv("engine", [20.0] * 3)], occ, 8)
    assert "250.0 ms of the run per output token, one request at a time" in lines[0]
    assert "50.0 ms" in lines[1] and "a batch of 5.0 sequences on average (at most 8)" in lines[1]


@pytest.mark.parametrize("engine_x, says", [(1.5, "below that full-batch bound: its batch averaged 5.0 of 8"),
                                            (3.0, "above that full-batch bound, which is an estimate"),
                                            (2.4, "at that full-batch bound")])
def test_05_what_this_means_places_the_engine_against_the_bound_it_names(engine_x, says):
    seq = _srv("sequential", [10.0] * 3, prefill_share=0.2, max_x_vs_sequential=5.0, max_x_at_batch=2.4,
               same_tokens_as_sequential=1.0)
    eng = _srv("engine", [10.0 * engine_x] * 3, same_tokens_as_sequential=1.0, throughput_x_vs_sequential=engine_x)
    text = "\n".join(bx.what_this_means([seq, eng], [], {"seqs": [2, 4, 6, 8]}, 8))
    assert says in text and "20% of the sequential server's busy time" in text and "at most 5.0x" in text
    assert f"{engine_x:.2f}x higher than sequential generate (the 'x sequential' column" in text
    assert "same greedy tokens" in text
    for hidden in ("prefill_share", "max_x_vs_sequential", "max_x_at_batch", "same_tokens_as_sequential"):
        assert hidden not in text  # the learner's table has none of these columns
    shown = set(bx.SERVER_VIEW.values())
    assert all(col in shown for col in re.findall(r"the '([^']+)' column", text))


def test_05_what_this_means_says_which_server_changed_the_answers():
    rows = [_srv("sequential", [10.0] * 3, same_tokens_as_sequential=1.0),
            _srv("engine", [20.0] * 3, same_tokens_as_sequential=0.75)]
    text = "\n".join(bx.what_this_means(rows, [], None, 8))
    assert "engine on 75% of the requests" in text and "Every server gave" not in text
    assert "Amdahl" not in text  # no bound without the sequential replay's prefill times


@pytest.mark.parametrize("batch, says", [(8, "8 sequences (the full batch asked)"),
                                         (2, "2 sequences (8 asked: the others had finished before the profiled"),
                                         (1.5, "1.5 sequences on average (8 asked")])
def test_05_the_step_profile_names_the_batch_that_ran(batch, says):
    import matplotlib

    matplotlib.use("Agg")
    prof = {"batch": batch, "asked": 8, "context": 540.0, "step_ms": 20.0, "linear layers": 12.0, "sampling": 1.0,
            "memory_floor_ms": 5.0, "compute_floor_ms": 2.0}
    assert says in bx.step_profile_sentence(prof) and "the floor is 25% of the step" in bx.step_profile_sentence(prof)
    assert says in bx.plot_step_profile(prof, "test card").axes[0].get_title()
    assert "full batch" not in bx.step_profile_sentence(prof) or batch == 8
    beaten = bx.step_profile_sentence({**prof, "step_ms": 4.0})
    assert "less than its memory floor of 5.0 ms" in beaten and "%" not in beaten


# ---------------------------------------------------------------- 06 kernels

def test_06_memory_line_claims_quadratic_growth_only_where_measured():
    assert "(the n x n scores)" in kx.memory_line({"eager": 1.98, "sdpa-flash": 1.01})
    assert "did not grow faster" in kx.memory_line({"eager": 1.05, "sdpa-flash": 1.0})


@pytest.mark.parametrize("a, z, says", [
    ({"speedup": 1.2}, {"speedup": 2.0, "conclusive": True}, "the more the fused kernel pays"),
    ({"speedup": 1.5}, {"speedup": 1.4, "conclusive": True}, "did not grow"),
    ({"speedup": 0.5}, {"speedup": 0.7, "conclusive": True}, "still slower"),
    ({"speedup": 0.9}, {"speedup": 1.02, "conclusive": False}, "inside the noise")])
def test_06_speed_trend_follows_the_factors(a, z, says):
    assert says in kx.speed_trend(a, z)


@pytest.mark.parametrize("bf16_peak, advice", [(500.0, "cast the model instead"), (1500.0, "no higher than")])
def test_06_autocast_advice_follows_the_peaks(bf16_peak, advice):
    p = pd.DataFrame({"total_peak_MiB": [1000.0, bf16_peak, 1200.0]}, index=["fp32", "bf16", "autocast-bf16"])
    assert advice in kx.autocast_line(p, "autocast-bf16")


@pytest.mark.parametrize("dtype, other", [("fp32", "bf16"), ("bf16", "fp32")])
def test_06_try_this_states_this_runs_figures(dtype, other):
    sweep = pd.DataFrame([{"status": "ok", "n": 1024, "backend": "eager", "ms": 10.0, "vs_eager": None},
                          {"status": "ok", "n": 1024, "backend": "sdpa-flash", "ms": 5.0, "vs_eager": "2.00x faster"}])
    plan = pd.DataFrame([{"n": 8192, "backend": "eager", "estimate_GiB": 99.0, "plan": "refused"},
                         {"n": 8192, "backend": "flex", "estimate_GiB": 0.5, "plan": "fits"}])
    comp = pd.DataFrame([{"variant": "eager", "decode_ms": 12.5}])
    lines = kx.try_this(dtype, sweep, plan, comp)
    assert f"-p attn_dtype={other}" in lines[1] and "2.00x faster than eager" in lines[1]
    assert "99.0 GiB" in lines[0] and "12.5 ms" in lines[2]
    fits = kx.try_this(dtype, sweep, plan.assign(plan="fits"), comp)[0]
    assert "fits the memory" in fits


# ---------------------------------------------------------------- 07 case study

def _stages(idle_fa: float, thr_fa: float, idle_cb: float = 1.0) -> list[dict]:
    return [{"stage": "baseline", "status": "ok"},
            {"stage": "+ INT8", "status": "ok", "ttft_idle_x_prev": 2.0, "throughput_x_prev": 1.5},
            {"stage": "+ continuous batching", "status": "ok", "ttft_idle_x_prev": idle_cb, "throughput_x_prev": 3.0,
             "ttft_loaded_x_prev": 4.0},
            {"stage": "+ fast attention", "status": "ok", "ttft_idle_x_prev": idle_fa, "throughput_x_prev": thr_fa}]


@pytest.mark.parametrize("idle, thr, says", [
    (1.09, 1.23, "shows more in throughput, where it was a gain"),  # the learner's numbers
    (1.40, 1.10, "shows more in the idle TTFT, where it was a gain"),
    (1.01, 0.98, "neither moved beyond the noise"),
    (0.70, 1.00, "shows more in the idle TTFT, where it was a loss"),
    (1.06, 1.06, "shows about equally in both"),  # a MoE run's numbers: both moved, by the same
    (1.10, 1.13, "shows about equally in both")])
def test_07_the_attention_sentence_follows_its_two_factors(idle, thr, says):
    assert says in cs.attention_line(_stages(idle, thr))


@pytest.mark.parametrize("idle_cb, says", [(1.02, "did not move"), (1.5, "moved too")])
def test_07_batching_sentence_checks_the_idle_ttft(idle_cb, says):
    assert says in cs.batching_line(_stages(1.0, 1.0, idle_cb))


def test_07_what_this_means_names_the_stage_that_paid_and_the_machines_units():
    text = casestudy.what_this_means(_stages(1.0, 1.0), [{"stage": "+ fast attention", "ppl_delta_pct": 0.2}],
                                     [{"stage": "+ fast attention", "identical": 0.75}], int8_units=False)
    assert "+ continuous batching gave the largest throughput factor (3.00x more)" in text
    assert "+ INT8 the largest idle-TTFT factor (2.00x lower)" in text and "no int8 matrix units" in text
    assert "kept 75% of the greedy answers" in text and "does not mean identical" in text
    assert cs.factor_words(1.03, "higher", "lower").startswith("no change")
    assert cs.factor_words(0.5, "higher", "lower") == "2.00x lower"


@pytest.mark.parametrize("picked, other", [("int8-dynamic-onednn", "int8-weight-only"),
                                           ("int8-weight-only", "int8-dynamic-onednn")])
def test_07_try_this_suggests_a_path_other_than_the_picked_one(picked, other):
    rows = [{"method": "int8-dynamic-onednn", "status": "ok", "why_not": None if picked != "int8-weight-only" else
             "slower"}, {"method": "int8-weight-only", "status": "ok", "why_not": "slower"}]
    text = casestudy.try_this(picked, rows, "poisson")
    assert f"`-p int8={other}` instead of the picked `{picked}`" in text and "arrival=all-at-once" in text


# ---------------------------------------------------------------- 02 quantization

MV = {"fp32": 10.0, "int8": 4.0}  # notebook 01's matrix-vector probes, GB/s


def _profile(reliable: bool = True, mv: dict = MV) -> dict:
    want = 4 * mv["int8"] / mv["fp32"]  # int8 reads a quarter of fp32's bytes, at its own probe's rate
    return {"device": "cpu", "reliable": reliable,
            "probes": {"cpu": {"matvec_gbps": mv, "bandwidth_gbps": {"best": 30.0}}},
            "predictions": [{"dtype": "fp32", "predicted speed-up vs fp32": 1.0},
                            {"dtype": "int8", "predicted speed-up vs fp32": want}]}


def _probe_ms(mib_read: float, gbps: float) -> float:
    return mib_read * 2**20 / (gbps * 1e9) * 1e3


def _quant_speed(fp32_ms: float, int8_ms: float, reason: str | None = None) -> pd.DataFrame:
    """fp32 reads 400 MiB per token, int8-dynamic 100 MiB; the profile's bandwidth is 30 GB/s."""
    rows = [{"method": "fp32", "status": "ok", "decode_read_mib": 400.0, "decode_ms_per_token": fp32_ms,
             "decode_x_vs_fp32": 1.0, "decode_fraction": _probe_ms(400, 30) / fp32_ms},
            {"method": "int8-dynamic", "status": "ok", "decode_read_mib": 100.0, "decode_ms_per_token": int8_ms,
             "decode_x_vs_fp32": fp32_ms / int8_ms, "decode_fraction": min(_probe_ms(100, 30) / int8_ms, 1.0),
             "decode_fraction_reason": reason}]
    return pd.DataFrame(rows)


AT_PROBE_FP32, AT_PROBE_INT8 = _probe_ms(400, MV["fp32"]), _probe_ms(100, MV["int8"])


@pytest.mark.parametrize("fp32_ms, int8_ms, reliable, reason, says", [
    # better than predicted: this path beat its own probe, on a quiet profile -> its kernel streams better
    (AT_PROBE_FP32, 5.0, True, None, "it streamed its bytes better than its probe predicted"),
    # ... on a profile marked unreliable, past the profile's bandwidth, or with fp32 past its probe too -> busy
    (AT_PROBE_FP32, 5.0, False, None, "notebook 01's profile is marked unreliable"),
    (AT_PROBE_FP32, 2.0, True, "measured 2 ms beat its floor", "this path beat the profile's bandwidth floor"),
    (AT_PROBE_FP32 / 1.4, 5.0, True, None, "fp32 too streamed 140% of its own probe's rate"),
    # better than predicted while this path kept to its probe: fp32 fell short of its own
    (AT_PROBE_FP32 * 2.4, AT_PROBE_INT8, True, None, "fp32 streamed its bytes at only 42%"),
    # slower than predicted: this path fell short of its probe -> its kernels set the pace
    (AT_PROBE_FP32, AT_PROBE_INT8 * 2.5, True, None, "its kernels, not the bytes, set the pace at batch 1"),
    # slower than predicted while this path kept to its probe: fp32 beat its own
    (AT_PROBE_FP32 / 2.8, AT_PROBE_INT8, True, None, "fp32 ran better than its probe predicted")])
def test_02_why_a_prediction_missed_follows_the_numbers(fp32_ms, int8_ms, reliable, reason, says):
    line = qv.prediction_lines(_quant_speed(fp32_ms, int8_ms, reason), _profile(reliable))[0]
    x = (fp32_ms / int8_ms) / (4 * MV["int8"] / MV["fp32"])
    assert says in line
    assert (f"measured {x:.1f}x better than predicted" in line) == (x > 1)
    assert (f"measured {1 / x:.1f}x slower than predicted" in line) == (x < 1)
    busy = "the profile was taken while the machine was busy"
    assert (busy in line) == (says in ("notebook 01's profile is marked unreliable", "this path beat the profile's "
                                       "bandwidth floor", "fp32 too streamed 140% of its own probe's rate"))
    assert ("set the pace" in line) == (says.startswith("its kernels"))


def test_02_a_far_better_result_is_never_explained_as_a_slow_kernel():
    # the learner's case: 65x better than predicted, once explained with the sentence for slow kernels
    line = qv.prediction_lines(_quant_speed(AT_PROBE_FP32, AT_PROBE_INT8 / 65), _profile())[0]
    assert "measured 65.0x better than predicted" in line and "set the pace" not in line


def test_02_inside_the_prediction_no_why_is_given():
    line = qv.prediction_lines(_quant_speed(AT_PROBE_FP32, AT_PROBE_INT8 * 1.2), _profile())[0]
    assert "Why on this machine" not in line and "predicted decode 1.60x fp32" in line


def test_02_a_beaten_floor_prints_its_reason_below_the_speed_table():
    speed = _quant_speed(AT_PROBE_FP32, 2.0, "measured 2 ms beat its floor")
    assert qv.floor_lines(speed) == ["int8-dynamic, decode_fraction: measured 2 ms beat its floor"]
    assert qv.floor_lines(_quant_speed(AT_PROBE_FP32, 5.0))[0].startswith("no row beat its floors")


def _ranked(wo_ms: float, compiled: str | None = None) -> pd.DataFrame:
    rows = [{"method": m, "status": "ok", "decode_ms_per_token": ms}
            for m, ms in (("fp32", 40.0), ("bf16", 20.0), ("int8-dynamic", 10.0), ("int8-weight-only", wo_ms),
                          ("bnb-int8", 300.0))]
    rows.append({"method": "rtn", "status": "not timed: fake-quantized", "decode_ms_per_token": None})
    if compiled:
        rows.append({"method": "int8-weight-only+compile", "status": "ok", "decode_ms_per_token": 5.0,
                     "decode_vs_eager": compiled})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("wo_ms, says", [
    (400.0, "int8-weight-only's eager decode is the slowest of the 5 timed rows here (400.0 ms/token), 1.33x the next"),
    (60.0, "ranks 4 of 5 timed rows here, fastest first (60.0 ms/token); the slowest row, bnb-int8, takes 300.0 "
           "ms/token, 5.00x as long"),
    (295.0, "1.02x as long (inside the noise: as slow)"), (302.0, "1.01x the next, bnb-int8 (inside the noise)")])
def test_02_try_this_ranks_int8_weight_only_from_the_table(wo_ms, says):
    line = qv.rank_line(_ranked(wo_ms))
    assert says in line and "not compiled in this run" in line
    assert ("slowest of the" in line) == (wo_ms > 300.0)


def test_02_try_this_says_what_compiling_did_or_why_it_was_not_timed():
    assert "its compiled row against its eager row, decode: 12.00x faster" in qv.rank_line(_ranked(60.0, "12.00x "
                                                                                                       "faster"))
    skipped = _ranked(60.0)
    skipped.loc[skipped["method"] == "int8-weight-only", "status"] = "skipped: torchao is not installed"
    assert qv.rank_line(skipped) == "int8-weight-only's eager decode was not timed here (skipped: torchao is not " \
                                    "installed)"


def _quality(int8: float, rtn: float, gptq: float, awq: float) -> pd.DataFrame:
    rows = [("fp32", 32.0, 1000, False, 1.0), ("bf16", 16.0, 500, False, 1.0),
            ("fp32, int8 head", 32.0, 900, False, 1.3),  # the head-only row is not a width of its own
            ("int8-dynamic", 8.06, 400, False, 1 + int8), ("int4-rtn", 4.5, 300, False, 1 + rtn),
            ("rtn", 4.25, 1000, True, 1 + rtn), ("gptq", 4.25, 1000, True, 1 + gptq), ("awq", 4.25, 1000, True,
                                                                                        1 + awq)]
    return pd.DataFrame([{"method": m, "status": "ok", "bits_per_weight": b, "bytes": n, "fake_quant": f,
                          "ppl_vs_fp32": p} for m, b, n, f, p in rows])


def test_02_what_this_means_states_each_widths_size_and_cost_from_the_table():
    lines = qv.meaning_lines(_quality(0.001, 0.05, 0.02, 0.06))
    assert lines[0].startswith("Size, 8-bit (int8-dynamic): the layers take 0.252 of fp32's bytes; the whole model "
                               "0.400 of fp32's, less of a cut")
    assert lines[1].startswith("Size, 4-bit (int4-rtn, rtn, gptq, awq): the layers take 0.133 to 0.141")
    assert "the whole model 0.300 of fp32's" in lines[1]  # fake-quantized rows hold dequantized weights: left out
    assert "Quality, 8-bit: perplexity +0.1% against fp32" in lines and "fp32, int8 head" not in " ".join(lines)
    assert "Quality: 4 bits cost more than 8 here (median +5.0% against +0.1%)" in lines
    assert lines[-1].endswith("gptq loses less than plain rounding, awq loses no less than plain rounding")


def test_02_what_this_means_says_when_fewer_bits_cost_no_more():
    lines = qv.meaning_lines(_quality(0.03, 0.01, 0.02, 0.005))
    assert "Quality: 4 bits cost no more than 8 here (median +1.0% against +3.0%)" in lines
    assert lines[-1].endswith("gptq loses no less than plain rounding, awq loses less than plain rounding")
    assert qv.meaning_lines(_quality(0, 0, 0, 0).iloc[:2]) == ["no quantized row ran here: nothing to compare with "
                                                                "fp32"]
