"""labkit.lessons.peers_genai: OpenVINO GenAI and ONNX Runtime GenAI as optional peers. Where a runtime is installed,
its conversion of the embedded model makes files, a runner that generates exactly the tokens asked for with positive
timings, and rows that `labkit peers` times; where it is not, every row says how to install it. A runtime whose fp32
tokens disagree with transformers' is never timed. Token agreement itself: tests/test_peers.py (check_tokens)."""

import sys

import pytest
import torch

from labkit.core import models
from labkit.lessons import peer_runtimes, peers_genai

ENGINES = peers_genai.ENGINES
FILES = {"openvino-genai": ("openvino_model.xml", "openvino_model.bin"),
         "onnxruntime-genai": ("model.onnx", "genai_config.json")}


@pytest.mark.parametrize("engine", ENGINES)
def test_rows_of_a_missing_runtime_name_its_install_command(engine, monkeypatch, tmp_path):
    import importlib.util

    module = peer_runtimes.MODULES[engine][0]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    monkeypatch.setattr(peers_genai, "embedded_check", lambda *a: pytest.fail("checked a missing runtime"))
    mine = peers_genai.genai_paths(lambda: pytest.fail("saved a model for a missing runtime"), tmp_path,
                                   {engine: peers_genai.KINDS[engine]}, progress=False)
    assert [r.name for r in mine] == [f"{engine} {k}" for k in peers_genai.KINDS[engine]]
    assert all(r.run is None and module in r.skipped and peer_runtimes.INSTALL[engine] in r.skipped for r in mine)


def test_openvino_without_its_converter_venv_says_where_it_looked(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # every runtime module "installed"
    monkeypatch.setenv("LABKIT_PEER_VENVS", str(tmp_path / "nowhere"))
    why = peer_runtimes.missing("openvino-genai")
    assert str(tmp_path / "nowhere" / "openvino" / "bin" / "optimum-cli") in why
    assert "python3.11 -m venv .peer-venvs/openvino" in why and "LABKIT_PEER_VENVS" in why
    (tmp_path / "nowhere" / "openvino" / "bin").mkdir(parents=True)
    (tmp_path / "nowhere" / "openvino" / "bin" / "optimum-cli").touch()
    assert peer_runtimes.missing("openvino-genai") is None
    assert peer_runtimes.missing("onnxruntime-genai") is None  # needs no side venv


def test_a_runtime_whose_tokens_disagree_is_not_timed(monkeypatch, tmp_path):
    monkeypatch.setattr(peers_genai, "missing", lambda engine: None)
    monkeypatch.setattr(peers_genai, "embedded_check", lambda engine, workdir: (engine == "onnxruntime-genai", 3))
    monkeypatch.setattr(peers_genai, "convert", lambda engine, *a: (type("R", (), {"generate": None})(), 1.0))
    rows = peers_genai.genai_paths(tmp_path, tmp_path, progress=False)
    ov = [r for r in rows if r.engine == "openvino-genai"]
    assert len(ov) == 3 and all(r.run is None and "disagrees with transformers" in r.skipped and "token 3" in r.skipped
                                for r in ov)
    assert all(not r.skipped for r in rows if r.engine == "onnxruntime-genai")


def test_a_failed_conversion_is_a_row_with_the_converters_last_lines(monkeypatch, tmp_path):
    monkeypatch.setattr(peers_genai, "missing", lambda engine: None)
    monkeypatch.setattr(peers_genai, "embedded_check", lambda engine, workdir: (True, None))
    monkeypatch.setattr(peers_genai, "to_ort", lambda hf, out, kind: peers_genai._run(
        [sys.executable, "-c", "import os, sys; print('HF_HUB_OFFLINE=' + os.environ['HF_HUB_OFFLINE']); sys.exit(3)"],
        tmp_path / f"{kind}.log", f"builder -p {kind}"))
    rows = peers_genai.genai_paths(tmp_path, tmp_path, {"onnxruntime-genai": ("int4",)}, progress=False)
    assert len(rows) == 1 and rows[0].run is None
    assert rows[0].skipped == "RuntimeError: builder -p int4 failed (exit 3): HF_HUB_OFFLINE=1"


@pytest.mark.parametrize("engine", ENGINES)
def test_converted_int4_model_generates_exactly_n_tokens_with_timings(engine, tmp_path):
    why = peer_runtimes.missing(engine)
    if why:
        pytest.skip(why)
    rows = peers_genai.genai_paths(models.resolve(models.EMBEDDED), tmp_path, {engine: ("int4",)}, progress=False)
    assert len(rows) == 1 and rows[0].skipped is None, rows[0].skipped  # its fp32 tokens agreed, int4 converted
    row = rows[0]
    assert all((tmp_path / f"{engine}-int4" / f).stat().st_size > 0 for f in FILES[engine])
    model = models.load()
    fp32_layers = 4 * sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    assert 0 < row.bytes_read < 0.5 * fp32_layers and row.bits == 4 and row.cold_s > 0  # the weights shrank
    if engine == "openvino-genai":  # else a repeated prompt reuses its cached KV blocks: its prefill is not timed
        assert row.run.__self__.scheduler.enable_prefix_caching is False
    ids = torch.tensor([[1, 5, 9, 200, 31, 7, 64, 3]])
    for n in (2, 5):
        rt, tokens = row.run(ids, n)
        assert len(tokens) == n == rt.output_tokens and rt.prompt_tokens == ids.shape[1]
        assert all(0 <= t < model.config.vocab_size for t in tokens)
        assert rt.ttft > 0 and rt.tpot > 0 and rt.token_times == sorted(rt.token_times)
    three = torch.cat([ids, ids.flip(1), (ids + 11) % model.config.vocab_size])  # its batched call: 3 at once
    batched = row.batch(three, 4)
    assert [len(t) for t in batched] == [4, 4, 4]
    assert batched == [row.run(three[i:i + 1], 4)[1] for i in range(3)]  # each request as it is alone


def test_agree_names_the_first_difference():
    assert peer_runtimes.agree([1, 2, 3], [1, 2, 3]) == (True, None)
    assert peer_runtimes.agree([1, 2, 3], [1, 5, 3]) == (False, 1)
    assert peer_runtimes.agree([1, 2, 3], [1, 2]) == (False, 2)
