"""labkit.course.advise and labkit.lessons.recommend: the recommendation follows the records' numbers (swap which path
is faster and the answer swaps), a difference inside the noise is called inconclusive, and a missing record gives
the command that makes it instead of a number. Records are fabricated in a temp folder with the layouts the
notebooks' run.save calls and `python -m labkit peers` write."""

import re

import pytest

from labkit.core import models, records, roofline
from labkit.course import advise
from labkit.lessons import recommend

SHAPE = "llama-2-7b"
PROFILE = {"device": "cpu", "probes": {"cpu": {"bandwidth_gbps": {"best": 40.0},
                                               "matmul_gflops": {"fp32": 200.0, "bf16": 800.0, "int8": 1600.0}}}}


def _save(root, experiment, config, metrics):
    records.write_record(records.make_record(experiment, config, metrics, fingerprint={"cpu": "test cpu"}), root)


def _speed(method, prefill_ms, decode_ms, bpw, x_pre, x_dec):
    return {"method": method, "base_dtype": "fp32", "status": "ok", "bytes_per_weight": bpw, "prefill_ms": prefill_ms,
            "decode_ms_per_token": decode_ms, "prefill_x_vs_fp32": x_pre, "decode_x_vs_fp32": x_dec}


def _speed_rows(fast="int8-dynamic"):
    """fp32 and two int8 paths; `fast` decodes 2x faster than the other, the other prefills 2x faster."""
    slow = "int8-weight-only" if fast == "int8-dynamic" else "int8-dynamic"
    return [_speed("fp32", 400.0, 80.0, 4.0, 1.0, 1.0), _speed(fast, 200.0, 20.0, 1.0, 2.0, 4.0),
            _speed(slow, 100.0, 40.0, 1.0, 4.0, 2.0)]


QUALITY = [{"method": "fp32", "status": "ok", "ppl_vs_fp32": 1.0},
           {"method": "int8-dynamic", "status": "ok", "ppl_vs_fp32": 1.01, "token_agreement": 0.97},
           {"method": "int8-weight-only", "status": "ok", "ppl_vs_fp32": 1.002}]


def _save_02(root, fast="int8-dynamic", layers=2):
    _save(root, "02_quantization", {"model": SHAPE, "layers": layers, "prompt_len": 256, "new_tokens": 8},
          {"speed": _speed_rows(fast), "quality": QUALITY})


def _save_peers(root, peer_decode):
    rows = [{"path": "labkit int8-dynamic+compile", "engine": "labkit", "bits/weight": 8, "status": "ok",
             "prefill tok/s": 500.0, "decode tok/s": 50.0},
            {"path": "llama.cpp q4_0", "engine": "llama.cpp", "bits/weight": 4.5, "status": "ok",
             "prefill tok/s": 300.0, "decode tok/s": peer_decode, "peak MiB": 541.0},
            {"path": "ctranslate2 int8", "engine": "ctranslate2", "status": "skipped: ctranslate2 is not installed; "
             "install it with: pip install ctranslate2"}]
    _save(root, "peers", {"shape": "tinyllama-1.1b", "layers": 8, "prompt_len": 512, "new_tokens": 32, "threads": 2},
          {"table": rows, "targets": []})


def _save_05(root, engine_tput, static_tput):
    rows = [{"server": "engine", "status": "ok", "output_throughput": engine_tput, "ttft_median_ms": 300.0,
             "tpot_median_ms": 50.0},
            {"server": "static", "status": "ok", "output_throughput": static_tput, "ttft_median_ms": 900.0,
             "tpot_median_ms": 40.0},
            {"server": "hf-continuous", "status": "skipped: not in this transformers"}]
    _save(root, "05_continuous_batching", {"model": "tinyllama-1.1b", "layers": 2, "dtype": "fp32",
                                           "prompt_len": 512, "max_batch": 8, "rate": 2.0}, {"poisson": rows})


def test_no_records_give_the_commands_that_make_them_and_no_number(tmp_path):
    a = advise.advise(model=SHAPE, users=4, root=tmp_path)
    assert set(a.missing) == set(advise.SOURCES) and a.choice == {}
    text = "\n".join(a.lines)
    for cmd in ("python -m labkit course --only 01", "--only 02", "--only 05", "--only 07", "python -m labkit peers"):
        assert cmd in text
    assert not re.search(r"\d+(\.\d+)? ?(ms|tok/s)", text)  # no record, no number


@pytest.mark.parametrize("fast", ["int8-dynamic", "int8-weight-only"])
def test_the_choice_follows_the_faster_path_in_the_records(tmp_path, fast):
    _save_02(tmp_path, fast)
    a = advise.advise(root=tmp_path)
    assert (a.choice["runtime"], a.choice["format"]) == ("labkit", fast)
    assert "peers" in a.missing and "02_quantization" not in a.missing
    assert f"quality: {recommend.quality_words(fast, QUALITY)}" in "\n".join(a.lines)


def test_projection_scales_the_measured_layers_to_full_depth_with_the_floor(tmp_path):
    _save_02(tmp_path, layers=2)
    a = advise.advise(root=tmp_path)
    assert "floor: no profile (run notebook 01)" in "\n".join(a.lines)  # no profile: no floor number
    spec = models.shape(SHAPE)
    ratio = (advise.step_bytes(spec, 32, 8.0, 256, 4) / advise.step_bytes(spec, 2, 8.0, 256, 4))
    assert a.choice["tpot_ms"] == pytest.approx(20.0 * ratio)
    assert a.choice["ttft_ms"] == pytest.approx(200.0 * roofline.forward_flops(spec, 256)
                                                / roofline.forward_flops(spec, 256, layers=2))
    _save(tmp_path, "hardware_profile", {}, PROFILE)
    b = advise.advise(root=tmp_path)
    floor_ms = 1e3 * advise.step_bytes(spec, 32, 8.0, 256, 4) / 40e9
    assert f"floor {floor_ms:,.1f} ms" in "\n".join(b.lines) and "hardware_profile" not in b.missing


def test_a_ttft_target_rules_out_the_slow_prefill(tmp_path):
    _save_02(tmp_path, "int8-dynamic")
    full = advise.advise(root=tmp_path).choice
    target = full["ttft_ms"] * 0.9  # int8-dynamic prefills 2x slower than int8-weight-only: only the other fits
    assert advise.advise(ttft_ms=target, root=tmp_path).choice["format"] == "int8-weight-only"
    none = advise.advise(ttft_ms=1e-6, root=tmp_path)
    assert "no measured path meets" in none.lines[1] and none.choice["format"] == "int8-weight-only"


@pytest.mark.parametrize("peer_decode, runtime", [(150.0, "llama.cpp"), (20.0, "labkit")])
def test_peers_record_ranks_the_runtimes_side_by_side(tmp_path, peer_decode, runtime):
    _save_02(tmp_path)
    _save_peers(tmp_path, peer_decode)
    a = advise.advise(root=tmp_path)
    assert a.choice["runtime"] == runtime
    text = "\n".join(a.lines)
    assert "ctranslate2 int8: skipped: ctranslate2 is not installed" in text
    assert "notebook 02's fastest decode (labkit int8-dynamic, from 02's own rounds on its own shape" in text
    assert "peers was measured on test cpu, not this machine" in text  # the fabricated records' CPU
    if runtime == "llama.cpp":
        assert "not measured here for llama.cpp q4_0" in text


def test_a_peers_prefill_floor_uses_the_fastest_matmul_rate(tmp_path):
    """A peer's kernels are unknown: its TTFT floor divides by the card's fastest rate (int8 here), never by a slow
    one it may not run (a 4-bit row priced at the bf16 rate gave a floor 5.7x above its measured TTFT)."""
    _save_peers(tmp_path, 150.0)
    _save(tmp_path, "hardware_profile", {}, PROFILE)
    a = advise.advise("tinyllama-1.1b", root=tmp_path)
    assert a.choice["runtime"] == "llama.cpp"
    assert ("memory: at most 541 MiB held while serving one 512-token request, measured at 8 layer(s) of "
            "tinyllama-1.1b") in "\n".join(a.lines)  # the peers record's memory column, not projected
    spec = models.shape("tinyllama-1.1b")
    floor_ms = 1e3 * roofline.forward_flops(spec, 512) / 1600e9
    assert f"floor {floor_ms:,.1f} ms" in "\n".join(a.lines)
    opt = advise.options_peers(records.latest("peers", tmp_path))
    assert {o.runtime: o.compute for o in opt} == {"labkit": "int8", "llama.cpp": advise.FASTEST}


@pytest.mark.parametrize("engine, static, pick", [(100.0, 50.0, "engine"), (50.0, 100.0, "static")])
def test_many_users_pick_the_batching_with_more_throughput(tmp_path, engine, static, pick):
    _save_02(tmp_path)
    _save_05(tmp_path, engine, static)
    a = advise.advise(users=16, root=tmp_path)
    assert a.choice["batching"] == pick
    text = "\n".join(a.lines)
    assert advise.SERVERS[pick] in text and "more than the 8 05 ran at once" in text
    assert a.choice["throughput_tok_s"] < max(engine, static)  # 32 layers of 7B read more than 2 of TinyLlama


def test_inside_the_noise_the_advice_says_inconclusive(tmp_path):
    _save_02(tmp_path)
    _save_05(tmp_path, 100.0, 101.0)
    text = "\n".join(advise.advise(users=4, root=tmp_path).lines)
    assert "inconclusive against" in text


def test_model_folder_and_bad_names(tmp_path):
    import json

    (tmp_path / "m").mkdir()
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
           "num_attention_heads": 4, "vocab_size": 100}
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    spec = advise.target_spec(str(tmp_path / "m"), {})
    assert (spec.num_hidden_layers, spec.num_key_value_heads, spec.name) == (3, 4, "m")
    with pytest.raises(models.ModelError, match="did you mean 'llama-2-7b'"):
        advise.target_spec("llama2-7b", {})
    with pytest.raises(ValueError, match="users must be >= 1"):
        advise.advise(users=0, root=tmp_path)


def test_advise_command_prints_and_refuses_bad_options(tmp_path, monkeypatch, capsys):
    from labkit.__main__ import main

    monkeypatch.setenv("LABKIT_REPORTS", str(tmp_path))
    monkeypatch.delenv("LABKIT_STAGING", raising=False)
    assert main(["advise", "--model", SHAPE]) == 0
    assert "python -m labkit course --only 02" in capsys.readouterr().out
    assert main(["advise", "--users", "0"]) == 2
    assert "users must be >= 1" in capsys.readouterr().err


# ---------------------------------------------------------------- notebook 02's sentences (labkit.lessons.recommend)

@pytest.mark.parametrize("fast", ["int8-dynamic", "int8-weight-only"])
def test_notebook_02_names_the_path_for_each_kind_of_traffic(fast):
    slow = "int8-weight-only" if fast == "int8-dynamic" else "int8-dynamic"
    decode, prefill = recommend.lines(_speed_rows(fast), QUALITY)
    assert decode.startswith("For decode-bound traffic") and f"use {fast} (20.0 ms/token" in decode
    assert f"2.00x faster than the next, {slow}" in decode and recommend.quality_words(fast, QUALITY) in decode
    assert prefill.startswith("For prefill-bound traffic") and f"use {slow} (100.0 ms prefill" in prefill


def test_notebook_02_calls_a_lead_inside_the_noise_inconclusive():
    rows = [_speed("fp32", 400.0, 80.0, 4.0, 1.0, 1.0), _speed("a", 200.0, 20.0, 1.0, 2.0, 4.0),
            _speed("b", 202.0, 20.4, 1.0, 1.98, 3.92)]
    decode, prefill = recommend.lines(rows, None)
    assert "inconclusive between a and b" in decode and "inconclusive between a and b" in prefill
    assert "not measured here (no quality row)" in decode
    assert "use a" in recommend.lines(rows, None, noise=0.001)[0]
    assert "no path was timed" in recommend.lines([{"method": "x", "status": "skipped: no"}])[0]


@pytest.mark.parametrize("peer, lead", [(150.0, "llama.cpp q4_0 leads by 3.00x"),
                                        (20.0, "labkit int8-dynamic+compile leads by 2.50x")])
def test_notebook_02_puts_the_peers_rows_beside_it(peer, lead):
    peers = [{"path": "labkit int8-dynamic+compile", "status": "ok", "prefill tok/s": 500.0, "decode tok/s": 50.0},
             {"path": "llama.cpp q4_0", "status": "ok", "prefill tok/s": 510.0, "decode tok/s": peer}]
    out = recommend.lines(_speed_rows(), QUALITY, peers)
    assert out[1].strip().startswith(f"peers, decode: {lead}")
    assert "peers, prefill: inconclusive" in out[3]


def test_notebook_02_gives_the_peers_runs_own_verdict_where_it_compared_the_same_pair():
    peers = [{"path": "labkit int8-dynamic+compile", "status": "ok", "prefill tok/s": 500.0, "decode tok/s": 50.0,
              "fraction of floor": 0.2},
             {"path": "llama.cpp q4_0", "status": "ok", "prefill tok/s": 510.0, "decode tok/s": 150.0,
              "fraction of floor": 0.6}]
    said = ["decode, best against best: labkit int8-dynamic+compile is 2.80x slower than llama.cpp q4_0 (the peer's "
            "wins here)"]
    out = recommend.lines(_speed_rows(), QUALITY, peers, said=said)
    assert out[1].strip().startswith("peers, decode: labkit int8-dynamic+compile is 2.80x slower than llama.cpp q4_0")
    assert "per-round ratios" in out[1] and "llama.cpp q4_0 150.0 tok/s (60% of its decode floor)" in out[1]
    assert "labkit int8-dynamic+compile 50.0 tok/s (20% of its decode floor)" in out[1]
    assert "of its decode floor" not in out[3]  # the peers record has no prefill floor
    assert "peers, prefill: inconclusive" in out[3]  # no sentence of the run for that phase: the medians' ratio


def test_for_notebook_says_how_to_add_the_peers(tmp_path):
    out = recommend.for_notebook(_speed_rows(), QUALITY, root=tmp_path)
    assert "python -m labkit peers" in out[-1]
    _save_peers(tmp_path, 150.0)
    out = recommend.for_notebook(_speed_rows(), QUALITY, root=tmp_path)
    assert "llama.cpp q4_0 leads" in "\n".join(out) and "tinyllama-1.1b with 8 layer(s)" in out[-1]


def test_check_runs_the_pick_at_full_depth_and_says_whether_the_prediction_holds(tmp_path, tiny_llama):
    """`advise --check` builds the model at full depth, runs the picked path in rounds and compares: a prediction
    near the measurement is within 1.5x, one 1,000x off is not; a model too large for the memory here is refused
    before anything is built."""
    from labkit.course import advise_check

    folder = tmp_path / "tiny"
    tiny_llama.save_pretrained(folder)
    spec = models.folder_spec(folder)
    choice = {"runtime": "labkit", "format": "int8-dynamic-legacy", "prompt_len": 16, "ttft_ms": 1.0, "tpot_ms": 1.0}
    lines, measured = advise_check.check(choice, spec, str(folder), new_tokens=4, repeats=2)
    assert measured["tpot_ms"] > 0 and measured["ttft_ms"] > 0 and measured["rounds"] == 2
    assert lines[0].startswith("check: labkit int8-dynamic-legacy run on")
    assert f"({spec.num_hidden_layers} layers, its own weights)" in lines[0]
    near = dict(choice, tpot_ms=measured["tpot_ms"] * 1.2, ttft_ms=measured["ttft_ms"] / 1.2)
    assert "within 1.5x" in advise_check.verdict("TPOT", near["tpot_ms"], measured["tpot_ms"])
    assert "1.20x over" in advise_check.verdict("TPOT", near["tpot_ms"], measured["tpot_ms"])
    assert "1.20x under" in advise_check.verdict("TTFT", near["ttft_ms"], measured["ttft_ms"])
    off = advise_check.verdict("TPOT", 1000 * measured["tpot_ms"], measured["tpot_ms"])
    assert "NOT within 1.5x" in off
    refused, nothing = advise_check.check(choice, spec, str(folder), available=advise_check.need_bytes(spec) / 2)
    assert nothing == {} and refused[0].startswith("check not run:") and "GiB" in refused[0]
    missing, _ = advise_check.check(dict(choice, runtime="nosuch"), spec, str(folder), new_tokens=4, repeats=1,
                                    workdir=tmp_path / "w")
    assert missing[0].startswith("check not run: nosuch int8-dynamic-legacy: unknown runtime")


def test_many_users_get_the_peers_batched_sentences_and_the_batch_dependent_rows(tmp_path):
    """With a peers record that timed batch 8, `advise --users N` prints the run's own batched sentences and names
    the rows whose answers changed in the batch; a record of batch 1 only says to rerun the peers."""
    _save_02(tmp_path)
    _save_peers(tmp_path, 150.0)
    old = "\n".join(advise.advise(root=tmp_path, users=4).lines)
    assert "this peers record times batch 1 only; rerun" in old and "the runtimes at batch" not in old
    rows = [{"path": "labkit int8-dynamic-legacy", "engine": "labkit", "bits/weight": 8, "status": "ok",
             "prefill tok/s": 300.0, "decode tok/s": 22.0, "batch-8 tok/s": 81.0, "batched": "ok, but its first "
             "request's tokens differ from its tokens alone (batch-dependent)"},
            {"path": "ctranslate2 int8", "engine": "ctranslate2", "bits/weight": 8, "status": "ok",
             "prefill tok/s": 287.0, "decode tok/s": 16.0, "batch-8 tok/s": 63.0, "batched": "ok"}]
    said = "batch-8 throughput, best against best: labkit int8-dynamic-legacy (81 tok/s) is 1.23x faster than " \
           "ctranslate2 int8 (63 tok/s) (labkit's wins here)"
    _save(tmp_path, "peers", {"shape": "tinyllama-1.1b", "layers": 8, "prompt_len": 512, "new_tokens": 32,
                              "threads": 2, "batch": 8, "batch_prompt": 64}, {"table": rows, "targets": [said]})
    lines = advise.advise(root=tmp_path, users=4).lines
    at = lines.index("  the runtimes at batch 8 (peers record: 64-token prompts, 8 layer(s) of tinyllama-1.1b, not "
                     "projected):")
    assert lines[at + 1] == f"    {said}"
    assert lines[at + 2].startswith("    batch-dependent here: labkit int8-dynamic-legacy (")
    assert not any("batch 1 only" in x for x in lines)
    assert not any("the runtimes at batch" in x for x in advise.advise(root=tmp_path, users=1).lines)
