"""labkit.lessons.peer_memory: the peers' memory column, each row served once in a process of its own. The numbers
must follow the weights (an fp32 model holds its weights resident; int4 holds far fewer bytes) and a row that cannot
be measured says why instead of a number."""

import pytest

from labkit.core import models
from labkit.lessons import peer_memory
from labkit.lessons.peer_runtimes import Contender

pytestmark = pytest.mark.skipif(peer_memory.unmeasured() is not None, reason=str(peer_memory.unmeasured()))

SPEC = {"shape": "tinyllama-1.1b", "layers": 1, "seed": 0}


def _spec(method: str) -> dict:
    return {"engine": "labkit", "kwargs": {**SPEC, "method": method}, "threads": 1, "prompt_len": 16,
            "new_tokens": 4, "vocab_size": models.shape("tinyllama-1.1b").vocab_size, "seed": 0}


def test_memory_follows_the_weights_fp32_against_int4():
    fp32_bytes = models.weight_bytes(models.build("tinyllama-1.1b", layers=1)) / 2**20
    fp32, int4 = peer_memory.measure(_spec("fp32")), peer_memory.measure(_spec("int4-rtn"))
    assert fp32["peak from"] == "the request", fp32
    assert fp32["loaded MiB"] >= 0.9 * fp32_bytes  # the weights are resident once the model is open
    assert fp32["peak MiB"] >= fp32["loaded MiB"]  # serving holds at least the model
    assert int4["loaded MiB"] < 0.5 * fp32["loaded MiB"]  # 4-bit linears (bf16 embedding) against 32-bit ones


def test_a_row_that_cannot_open_says_why(tmp_path):
    got = peer_memory.measure({"engine": "no-such-engine", "runner": "os:system", "path": str(tmp_path),
                               "threads": 1, "prompt_len": 4, "new_tokens": 2, "vocab_size": 32})
    assert list(got) == ["memory"] and got["memory"].startswith("not measured: its process failed")
    assert "unknown runner 'os:system'" in got["memory"]  # only the peers' runner classes are opened


def test_without_proc_nothing_is_measured(monkeypatch, tmp_path):
    monkeypatch.setattr(peer_memory, "STATUS", tmp_path / "absent")
    assert peer_memory.measure(_spec("fp32")) == {"memory": peer_memory.unmeasured()}
    assert "needs Linux" in peer_memory.unmeasured()


def test_compiled_rows_are_not_reopened(monkeypatch):
    seen = []
    monkeypatch.setattr(peer_memory, "measure", lambda spec: seen.append(spec) or {"loaded MiB": 1.0})
    rows = [Contender("labkit int4-rtn", "labkit"), Contender("labkit int4-rtn+compile", "labkit"),
            Contender("ctranslate2 int8", "ctranslate2", reopen={"engine": "ctranslate2", "path": "x", "kwargs": {}})]
    got = peer_memory.of_rows(rows, SPEC, 16, 4, 100, progress=False)
    assert [s["engine"] for s in seen] == ["labkit", "ctranslate2"]
    assert seen[0]["kwargs"]["method"] == "int4-rtn" and seen[0]["kwargs"]["layers"] == 1
    assert got["labkit int4-rtn+compile"]["memory"].startswith("not measured: a compiled row")


def test_a_peer_row_holds_its_converted_weights(tmp_path):
    from labkit.lessons import peers

    if why := peers.missing("ctranslate2"):
        pytest.skip(why)
    model = models.build("tinyllama-1.1b", layers=1).float()
    ct2 = peers.to_ct2(peers.save_hf(model, tmp_path / "hf"), tmp_path / "ct2", "int8")
    spec = {**_spec("fp32"), "engine": "ctranslate2", "runner": "labkit.lessons.peers:CT2Runner", "path": str(ct2),
            "kwargs": {"compute_type": "int8"}}
    got = peer_memory.measure(spec)
    on_disk = (ct2 / "model.bin").stat().st_size / 2**20
    assert 0.9 * on_disk <= got["loaded MiB"] and got["peak MiB"] >= got["loaded MiB"], (got, on_disk)


def test_least_line_compares_the_leanest_of_each_side():
    import pandas as pd

    t = pd.DataFrame([{"path": "labkit fp32", "engine": "labkit", "peak MiB": 2000.0},
                      {"path": "labkit int4-rtn", "engine": "labkit", "peak MiB": 500.0},
                      {"path": "ctranslate2 int8", "engine": "ctranslate2", "peak MiB": 650.0},
                      {"path": "openvino-genai int4", "engine": "openvino-genai", "peak MiB": None}])
    assert peer_memory.least_line(t) == ("memory, least against least: labkit int4-rtn peaks at 500 MiB serving one "
                                         "request, the leanest peer (ctranslate2 int8) at 650 MiB (1.30x labkit's)")
    assert "not measured (no peer ran)" in peer_memory.least_line(t[t["engine"] == "labkit"])
    assert peer_memory.least_line(t.drop(columns=["peak MiB"])) is None


def test_every_peer_runner_can_be_reopened():
    from labkit.lessons import peers, peers_genai

    for cls in (peers.LlamaCppRunner, peers.CT2Runner, peers_genai.OpenVINORunner, peers_genai.ORTGenAIRunner):
        got = peer_memory.reopen("e", cls, "/x", a=1)
        assert got["runner"] in peer_memory.RUNNERS and got["path"] == "/x" and got["kwargs"] == {"a": 1}


def test_a_row_whose_process_dies_of_a_signal_is_named_and_the_rest_are_kept(monkeypatch):
    import subprocess

    from labkit.lessons import peer_memory, peers
    from labkit.lessons.peer_runtimes import Contender

    spec = {"engine": "llama.cpp", "runner": "labkit.lessons.peers:LlamaCppRunner", "path": "x.gguf", "kwargs": {},
            "threads": 1, "prompt_len": 16, "vocab_size": 32, "seed": 0}
    codes = iter([-11, 1, 0])
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: subprocess.CompletedProcess(
        argv, next(codes), "", "Traceback\nValueError: bad file"))
    assert peer_memory.crashes(spec) == ("its process died of SIGSEGV serving a 16-token prompt (a crash in native "
                                         "code)")
    assert peer_memory.crashes(spec) == "its process failed: ValueError: bad file"
    assert peer_memory.crashes(spec) is None

    seen = []
    monkeypatch.setattr(peer_memory, "crashes", lambda s: seen.append(s["path"]) or (
        "its process died of SIGSEGV" if s["path"] == "q4.gguf" else None))
    rows = [Contender("llama.cpp q4_0", "llama.cpp", 4.5, 1.0, lambda ids, n: None,
                      reopen=peer_memory.reopen("llama.cpp", peers.LlamaCppRunner, "q4.gguf")),
            Contender("llama.cpp bf16", "llama.cpp", 16, 1.0, lambda ids, n: None,
                      reopen=peer_memory.reopen("llama.cpp", peers.LlamaCppRunner, "bf16.gguf")),
            Contender("labkit fp32", "labkit", 32, 1.0, lambda ids, n: None),  # in this process already: not re-run
            Contender("ctranslate2 int8", "ctranslate2", skipped="not installed")]
    got = peers.survivors(rows, 16, 32, 0, progress=False)
    assert seen == ["q4.gguf", "bf16.gguf"]  # rows skipped already, or labkit's own, are not opened again
    assert got[0].skipped.startswith("its process died of SIGSEGV; on a CPU with AMX") and got[0].bits == 4.5
    assert got[1] is rows[1] and got[2] is rows[2] and got[3] is rows[3]
