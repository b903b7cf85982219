"""The CUDA paths, where a GPU is present; CI has none, so every test that needs one skips with the reason.
A session lent a GPU runs this file and `python -m labkit.course.cuda_check` (see that module). The dry run of the
check's steps on the CPU is tested here too, so the script a GPU session starts with is known to run."""

import json

import pytest
import torch

from labkit.core import models
from labkit.course import cuda_check
from labkit.serve import SamplingParams
from labkit.serve.engine import EngineConfig, LLMEngine

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")


@needs_cuda
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_engine_on_cuda_equals_generate(attention):
    got = cuda_check._engine_vs_generate("cuda", small=False)[attention]
    assert got["kv_cache_device"].startswith("cuda")
    assert got["ok"], got["parted"]  # token-exact, or parted only at a near-tie (top-2 gap under 1e-4)


@needs_cuda
def test_bf16_prefill_takes_the_flash_kernel_on_cuda():
    got = cuda_check._flash_prefill("cuda", small=False)
    assert got["flash_prefill"] == "ran" and got["first_token_equals_generate"]


@needs_cuda
def test_engine_on_cuda_serves_a_batch_of_mixed_requests_in_bf16():
    m = models.load(models.EMBEDDED, dtype="bf16", device="cuda")
    prompts = cuda_check._prompts(6, 120, seed=3)
    eng = LLMEngine(m, EngineConfig(max_num_seqs=4, block_size=16, num_blocks=128, max_model_len=256,
                                    max_num_batched_tokens=64))
    outs = eng.generate(prompts, SamplingParams(max_tokens=10, ignore_eos=True))
    assert [len(o) for o in outs] == [10] * 6
    assert eng.scheduler.block_manager.num_free_blocks == 128


def test_the_check_runs_its_steps_on_the_cpu_and_records_a_failing_one(tmp_path, monkeypatch):
    report = cuda_check.run("cpu", small=True, out=tmp_path, only=["device", "engine vs generate", "flash prefill"])
    assert report["engine vs generate"]["ok"] and report["engine vs generate"]["sdpa"]["identical"] == 1.0
    assert report["flash prefill"]["skipped"] == "SDPA's flash kernel is CUDA's"

    def broken(device, small):
        raise RuntimeError("a CUDA path broke")

    monkeypatch.setitem(cuda_check.STEPS, "05 servers", broken)
    report = cuda_check.run("cpu", small=True, out=tmp_path, only=["device", "05 servers"])
    assert report["device"]["ok"] and not report["05 servers"]["ok"]
    assert "RuntimeError: a CUDA path broke" in report["05 servers"]["traceback"]
    assert json.loads((tmp_path / "cuda_check.json").read_text())["05 servers"]["ok"] is False
    if not torch.cuda.is_available():
        assert cuda_check.main(["--device", "cuda"]) == 2  # says how to dry-run instead
