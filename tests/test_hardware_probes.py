"""The probes run and return sane, positive numbers on tiny sizes. Speeds are never asserted here."""

import pytest
import torch

from labkit.core import hardware as H


def _rates_positive(p: H.Probe) -> None:
    assert p.skipped is None, p.skipped
    assert p.seconds > 0 and p.gb_per_s > 0
    assert p.timing.cold_s > 0 and len(p.timing.times_s) >= 1


def test_bandwidth_probe_counts_bytes_read_plus_written():
    probes = H.probe_bandwidth(mib=2, repeats=2, min_time_s=0)
    by = {p.name: p for p in probes}
    assert set(by) == {"read", "copy", "triad"}
    n = 2 * 2**20
    assert by["read"].bytes_moved == n and by["copy"].bytes_moved == 2 * n and by["triad"].bytes_moved == 3 * n
    for p in probes:
        _rates_positive(p)
        row = p.to_dict()
        assert row["GB/s"] == pytest.approx(p.bytes_moved / p.seconds / 1e9)


@pytest.mark.parametrize("dtype", H.PROBE_DTYPES)
def test_matrix_probe_every_dtype(dtype):
    mv = H.probe_matrix(dtype, tokens=1, k=64, n=96, repeats=1, min_time_s=0)
    mm = H.probe_matrix(dtype, tokens=32, k=64, n=96, repeats=1, min_time_s=0)
    assert (mv.name, mm.name) == ("matvec", "matmul")
    elt = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}[dtype]
    out = 4 if dtype == "int8" else elt
    assert mm.flops == 2 * 32 * 64 * 96
    assert mm.bytes_moved == 96 * 64 * elt + 32 * 64 * elt + 32 * 96 * out
    for p in (mv, mm):
        _rates_positive(p)
        assert p.gflop_per_s > 0
    if dtype == "int8":  # the kernel the course's INT8 paths call: oneDNN's on x86, torch._int_mm elsewhere
        assert mm.shape.endswith("(oneDNN int8 linear)" if H.onednn_unsupported() is None else "(torch._int_mm)")


def test_matvec_cycles_through_enough_weights_to_defeat_caches():
    p = H.probe_matrix("fp32", tokens=1, k=256, n=256, repeats=1, min_weight_mib=1)
    assert p.shape.endswith("x4 weights")  # 256 KiB each, 4 of them = 1 MiB
    assert p.bytes_moved == 4 * (256 * 256 * 4 + 256 * 4 + 256 * 4)


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="unknown probe dtype"):
        H.probe_matrix("fp8", 1, 64, 64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_cuda_probes_skip_with_a_reason_without_a_gpu():
    assert "CUDA not available" in H.device_skip_reason("cuda")
    assert H.device_skip_reason("cpu") is None
    probes = H.probe_bandwidth(mib=1, device="cuda") + [H.probe_matrix("bf16", 1, 64, 64, device="cuda")]
    assert all(p.skipped and p.timing is None and p.gb_per_s is None for p in probes)
    summary = H.summarize_probes(probes)
    assert "cuda" not in summary and summary["skipped"]


def test_run_probes_summary_and_agreement():
    kw = dict(devices=("cpu", "cuda"), bandwidth_mib=1, k=64, n=64, prefill_tokens=16, repeats=1,
              progress=False, min_time_s=0)
    first, second = H.run_probes(**kw), H.run_probes(**kw)
    assert len(first) == 2 * (3 + 2 * len(H.PROBE_DTYPES))
    rows = H.probe_agreement(first, second)
    assert rows and all(r["ratio"] > 0 for r in rows)
    cpu = H.summarize_probes(first + second)["cpu"]
    reads = [cpu["bandwidth_gbps"][k] for k in ("read", "copy", "triad")] + list(cpu["matvec_gbps"].values())
    assert cpu["bandwidth_gbps"]["best"] == max(reads)  # no kernel measured here reads faster than the floor's rate
    best = cpu["bandwidth_gbps"]["best_probe"]
    assert cpu["bandwidth_gbps"]["best"] == (cpu["matvec_gbps"][best.split()[1]] if best.startswith("matvec")
                                             else cpu["bandwidth_gbps"][best])
    assert set(cpu["matmul_gflops"]) == set(H.PROBE_DTYPES) and all(v > 0 for v in cpu["matmul_gflops"].values())
    with pytest.raises(ValueError, match="differ"):
        H.probe_agreement(first, list(reversed(second)))


def test_disk_probe(tmp_path):
    d = H.probe_disk(tmp_path, mib=2, repeats=1)
    assert d["bytes"] == 2 * 2**20
    assert d["write_gbps"] > 0 and d["cold_read_gbps"] > 0 and d["warm_read_gbps"] > 0
    assert list(tmp_path.iterdir()) == []  # the probe file is removed


def test_loading_probe_in_fresh_processes(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.randn(256, 1024), "b": torch.randn(1024).to(torch.bfloat16)}, str(path))
    rows = H.probe_loading(path, repeats=1)
    assert [r["method"] for r in rows] == list(H.LOAD_METHODS)
    for r in rows:
        assert r["file_bytes"] == path.stat().st_size
        assert r["first_s"] > 0 and r["repeat_s"] > 0 and r["peak_rss_growth_bytes"] >= 0
    assert [r["user_copies"] for r in rows] == [0, 1, 2]


def test_generation_probe_on_a_tiny_model():
    from transformers import AutoModelForCausalLM

    from labkit.core.models import ShapeSpec, _config_for

    spec = ShapeSpec("tiny", "llama", 64, 176, 2, 4, 2, 300, 256, 10000.0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config_for(spec, 2)).eval()
    ids = torch.randint(3, 300, (1, 12))
    r = H.probe_generation(model, ids, new_tokens=4, repeats=1)
    assert r["prompt_tokens"] == 12 and r["decode_context"] == 14
    assert r["prefill_s"] > 0 and r["tpot_s"] > 0 and r["ttft_s"] > 0
