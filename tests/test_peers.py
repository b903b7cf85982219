"""labkit.lessons.peers: llama.cpp and CTranslate2 as optional peers. Where they are installed, the conversions must
compute the same model as transformers (token-exact greedy output of the trained embedded model); where they are
not, every row says how to install them. No timing assertions: `python -m labkit peers` prints the ratios."""

import pytest
import torch

from labkit.core import models
from labkit.lessons import peer_verdicts, peers


def test_missing_peer_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    why = peers.missing("llama.cpp")
    assert "llama_cpp" in why.split("missing")[0] and "pip install llama-cpp-python" in why
    with pytest.raises(ValueError, match="unknown peer"):
        peers.missing("vllm")


def test_skipped_peers_are_rows_with_the_reason(monkeypatch, tmp_path):
    from labkit.lessons import peers_genai

    for module in (peers, peers_genai):
        monkeypatch.setattr(module, "missing", lambda engine: f"{engine} is not installed; install it with: x")
    rows = peers.peer_paths(None, tmp_path, progress=False)
    assert [r.name for r in rows] == ["llama.cpp bf16", "llama.cpp q8_0", "llama.cpp q4_0", "llama.cpp q4_K_M",
                                      "ctranslate2 int8",
                                      "ctranslate2 bfloat16", "openvino-genai fp32", "openvino-genai int8",
                                      "openvino-genai int4", "onnxruntime-genai int4", "onnxruntime-genai int8",
                                      "onnxruntime-genai fp32"]
    assert all(r.skipped and r.run is None for r in rows)
    assert all(r.skipped.startswith(f"{r.engine} is not installed") for r in rows)


def test_peer_runtimes_stay_out_of_requirements():
    from labkit import ROOT

    reqs = (ROOT / "requirements.txt").read_text().lower()
    assert not any(name in reqs for name in ("openvino", "onnxruntime", "llama-cpp", "ctranslate2"))


def test_gguf_permutation_is_llama_cpps_interleaving():
    w = torch.arange(2 * 8 * 3).reshape(2 * 8, 3)  # 2 heads of 8 rows: halves [0..3],[4..7] -> pairs interleaved
    p = peers._permute(w, 2)
    assert torch.equal(p[:8, 0] // 3, torch.tensor([0, 4, 1, 5, 2, 6, 3, 7]))
    assert torch.equal(p[8:, 0] // 3, torch.tensor([8, 12, 9, 13, 10, 14, 11, 15]))


@pytest.mark.parametrize("engine", list(peers.INSTALL))
def test_converted_model_gives_transformers_greedy_tokens(engine, tmp_path):
    why = peers.missing(engine)
    if why:
        pytest.skip(why)
    got = peers.check_tokens(models.load(), models.load_tokenizer(), "def main(args):\n    ", 16, tmp_path,
                             engines=(engine,))
    assert got[engine] == (True, None), got


def test_latest_lines_without_and_with_a_record(tmp_path):
    from labkit.core import records

    table, lines = peers.latest_lines(tmp_path)
    assert table is None and "python -m labkit peers" in lines[-1]
    rows = [{"path": "llama.cpp q4_0", "status": "ok", "decode tok/s": 10.0}]
    records.save(peers.EXPERIMENT, {"shape": "tinyllama-1.1b", "layers": 8, "prompt_len": 512, "new_tokens": 32,
                                    "threads": 2}, {"table": rows, "targets": ["decode: x"]}, root=tmp_path)
    table, lines = peers.latest_lines(tmp_path)
    assert list(table["path"]) == ["llama.cpp q4_0"] and lines[-1] == "decode: x"
    assert "NOT this machine" not in lines[-2] and "tinyllama-1.1b with 8 layer(s)" in lines[-2]


def test_target_lines_pick_labkits_fastest_path_and_say_the_ratio():
    import pandas as pd

    from labkit.core.bench import run_rounds

    tpot = {"labkit int4-rtn": 0.010, "labkit bnb-nf4": 0.030, "llama.cpp q4_0": 0.020, "labkit bf16": 0.050,
            "llama.cpp bf16": 0.025}
    r = run_rounds({k: (lambda v=v: {"ttft": 1.0, "tpot": v}) for k, v in tpot.items()}, 3, progress=False)
    table = pd.DataFrame([{"path": k, "status": "ok"} for k in tpot] + [{"path": "llama.cpp q8_0", "status": "no"}])
    lines = peer_verdicts.target_lines(r, table)
    assert lines[0] == "decode: labkit int4-rtn is 2.00x faster than llama.cpp q4_0 (meets the >= 1.0x target)"
    assert lines[1] == "decode: labkit bf16 is 2.00x slower than llama.cpp bf16 (misses the >= 1.0x target)"
    assert "not measured (the peer did not run)" in lines[2]
    assert lines[-2] == ("prefill, best against best: labkit int4-rtn is no different from llama.cpp q4_0: "
                         "inconclusive (1.00x, rounds 1.00-1.00x, noise floor ±5%) (neither wins here)")
    assert lines[-1] == ("decode, best against best: labkit int4-rtn is 2.00x faster than llama.cpp q4_0 "
                         "(labkit's wins here)")
    slow = run_rounds({"labkit bf16": lambda: {"ttft": 1.0, "tpot": 0.05}, "ort int4": lambda: {"ttft": 2.0,
                                                                                                 "tpot": 0.01}},
                      3, progress=False)
    two = pd.DataFrame([{"path": "labkit bf16", "status": "ok"}, {"path": "ort int4", "status": "ok"}])
    assert peer_verdicts.best_lines(slow, two) == [
        "prefill, best against best: labkit bf16 is 2.00x faster than ort int4 (labkit's wins here)",
        "decode, best against best: labkit bf16 is 5.00x slower than ort int4 (the peer's wins here)"]
    assert "not measured (no peer ran)" in peer_verdicts.best_lines(slow, two[:1])[0]


@pytest.mark.parametrize("argv, message", [(["--labkit", "bf16,nope"], "unknown labkit path(s) ['nope']"),
                                           (["--layers", "0"], "must be >= 1"),
                                           (["--shape", "llama2-7b"], "llama-2-7b"),
                                           (["--batch", "1"], "--batch 0 (none) or >= 2")])
def test_peers_command_refuses_bad_options_before_building_anything(argv, message, capsys, monkeypatch):
    from labkit.__main__ import main

    monkeypatch.setattr(peers, "compare", lambda *a, **k: pytest.fail("compare ran on bad options"))
    assert main(["peers", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_default_labkit_paths_follow_the_cpus_matrix_units():
    from labkit.lessons import peer_runtimes

    every, why = peer_runtimes.default_paths({"bf16": True, "int8": True})
    assert every == peers.LABKIT_PATHS and "every labkit path" in why
    for units, lacks in (({"bf16": False, "int8": False}, "no bf16 and int8"), ({"bf16": True, "int8": False},
                                                                                 "no int8")):
        paths, why = peer_runtimes.default_paths(units)
        assert paths == peer_runtimes.NO_UNITS_PATHS and lacks in why and "--labkit" in why
        assert set(paths) <= set(peers.KNOWN_PATHS) and not any(p.startswith("bf16") for p in paths)


def test_labkit_fp32_is_a_timed_reference_path(tiny_llama):
    ids = torch.randint(0, tiny_llama.config.vocab_size, (1, 8))
    got = peers.labkit_paths(tiny_llama, ids, 3, names=("fp32",), progress=False)
    assert [c.name for c in got] == ["labkit fp32"] and got[0].skipped is None and got[0].bits == 32
    rt, tokens = got[0].run(ids, 3)
    assert len(tokens) == 3 and rt.ttft > 0


def _contender(name: str, engine: str, nbytes: float) -> peers.Contender:
    return peers.Contender(name, engine, 8.0, nbytes)


def test_a_beaten_floor_is_re_derived_and_says_why():
    from labkit.core.roofline import Card

    timed = [(_contender("labkit bf16", "labkit", 1e8), 0.010),  # 100 MB in 10 ms: 10 GB/s against a 5 GB/s card
             (_contender("llama.cpp q8_0", "llama.cpp", 5e7), 0.020),  # 2.5 GB/s: within the card's bandwidth
             (_contender("ctranslate2 int8", "ctranslate2", 4e8), 0.010)]  # 40 GB/s, but its bytes are an upper bound
    got = peer_verdicts.floor_fields(timed, Card("t", 16.0, 5.0, {"fp32": 1.0}, measured=True), "a test profile")
    ours, ggml, ct2 = got["labkit bf16"], got["llama.cpp q8_0"], got["ctranslate2 int8"]
    # re-derived from the fastest path with exact bytes (labkit's own 10 GB/s), not from CTranslate2's upper bound
    assert ours["decode floor ms"] == pytest.approx(10.0) and ours["fraction of floor"] == pytest.approx(1.0)
    assert "memory bandwidth rate (5.0 GB/s, a test profile)" in ours["fraction of floor_reason"]
    assert ggml["fraction of floor"] == pytest.approx(0.5) and "fraction of floor_reason" not in ggml
    assert ct2["fraction of floor"] == pytest.approx(1.0) and "upper bound" in ct2["fraction of floor_reason"]
    assert all(r["fraction of floor"] <= 1.05 for r in got.values())


def test_latest_lines_print_the_reason_of_every_beaten_floor(monkeypatch):
    from labkit.core import records

    table = [{"path": "labkit bf16", "status": "ok", "fraction of floor": 1.0,
              "fraction of floor_reason": "measured 10 ms beat its floor of 20 ms"},
             {"path": "llama.cpp q8_0", "status": "ok", "fraction of floor": 0.5}]
    rec = {"time": "2026-01-01T00:00:00", "fingerprint": {"cpu": "some cpu"},
           "config": {"shape": "tinyllama-1.1b", "layers": 8, "prompt_len": 512, "new_tokens": 32, "threads": 4},
           "metrics": {"table": table, "targets": ["decode: a target line"]}}
    monkeypatch.setattr(records, "latest", lambda name, root=None: rec)
    _, lines = peers.latest_lines()
    assert lines[-2:] == ["decode: a target line",
                          "labkit bf16, fraction of floor: measured 10 ms beat its floor of 20 ms"]


def test_batched_rows_time_one_request_against_b_at_once_and_flag_batch_dependence(tiny_llama):
    """peer_batch.measure: a row with a batched call is timed alone and B at once in the same rounds; its gain is
    B x (one request's time / the batch's), its tokens compared with its tokens alone; a row without a batched
    call keeps its reason. Real batched calls: transformers' generate gives each row its tokens alone (fp32)."""
    import time

    import pandas as pd

    from labkit.core.bench import RequestTiming
    from labkit.lessons import peer_batch
    from labkit.lessons.peer_runtimes import Contender

    def fake(name, alone_s, batch_s, first):
        def run(ids, n):
            time.sleep(alone_s)
            return RequestTiming(start=0.0, token_times=[0.1] * n, prompt_tokens=ids.shape[1]), [1] * n

        def batch(ids, n):
            time.sleep(batch_s)
            return [[first] * n] + [[1] * n] * (ids.shape[0] - 1)
        return Contender(name, name.split()[0], run=run, batch=batch)

    rows = [fake("labkit a", 0.01, 0.02, 1), fake("peer b", 0.01, 0.04, 9),
            Contender("llama.cpp q4_0", "llama.cpp", run=lambda ids, n: None, batch=peer_batch.NO_BATCH["llama.cpp"])]
    got, r = peer_batch.measure(rows, 4, 8, 3, 3, 256, progress=False)
    assert got["labkit a"]["batching gain"] == pytest.approx(2.0, rel=0.3)  # 4 x 0.01 / 0.02
    assert got["peer b"]["batching gain"] == pytest.approx(1.0, rel=0.3)
    assert got["labkit a"]["batch-4 tok/s"] == pytest.approx(4 * 3 / 0.02, rel=0.3)
    assert got["labkit a"]["batched"] == "ok" and "batch-dependent" in got["peer b"]["batched"]
    assert got["llama.cpp q4_0"] == {"batched": peer_batch.NO_BATCH["llama.cpp"]}
    table = pd.DataFrame([{"path": n, **v} for n, v in got.items()])
    table.attrs.update(batch=4, batch_rounds=r)
    lines = peer_verdicts.batch_lines(table)
    assert lines[0].startswith("batch-4 throughput, best against best: labkit a (")
    assert "x faster than peer b (" in lines[0] and lines[0].endswith("answered a request differently in the batch "
                                                                      "than alone (batch-dependent: its answers "
                                                                      "change with their neighbours)")
    assert "(labkit's wins here); but peer b answered" in lines[0]
    assert lines[1].startswith("batching 4 requests gains most in labkit a") and "least in peer b" in lines[1]
    with pytest.raises(ValueError, match="at least 2"):
        peer_batch.measure(rows, 1, 8, 3, 1, 256)

    ids = models.prompt_ids(8, batch=3, vocab_size=256, seed=1)
    batched = peer_batch.hf(tiny_llama)(ids, 5)
    with torch.inference_mode():
        alone = [tiny_llama.generate(input_ids=ids[i:i + 1], do_sample=False, min_new_tokens=5, max_new_tokens=5)
                 [0, 8:].tolist() for i in range(3)]
    assert batched == alone


def test_ctranslate2_batched_call_gives_each_request_its_tokens_alone(tmp_path):
    why = peers.missing("ctranslate2")
    if why:
        pytest.skip(why)
    from labkit.lessons import peer_batch

    model = models.load()
    runner = peers.CT2Runner(peers.to_ct2(peers.save_hf(model, tmp_path / "hf"), tmp_path / "ct2", "int8"), "int8")
    ids = models.prompt_ids(12, batch=3, vocab_size=model.config.vocab_size, seed=2)
    batched = peer_batch.of(runner, "ctranslate2")(ids, 4)
    assert batched == [runner.generate(ids[i:i + 1], 4)[1] for i in range(3)] and len(batched[0]) == 4
