"""The probes run and return sane, positive numbers on tiny sizes. Speeds are never asserted here."""

import dataclasses

import pytest
import torch

from labkit.core import models, onednn, planner, probes, roofline, storage
from labkit.core.bench import Timing


def _rates_positive(p: probes.Probe) -> None:
    assert p.skipped is None, p.skipped
    assert p.seconds > 0 and p.gb_per_s > 0
    assert p.timing.cold_s > 0 and len(p.timing.times_s) >= 1


def test_bandwidth_probe_counts_bytes_read_plus_written():
    found = probes.probe_bandwidth(mib=2, repeats=2, min_time_s=0)
    by = {p.name: p for p in found}
    assert set(by) == {"read", "copy", "triad"}
    n = 2 * 2**20
    assert by["read"].bytes_moved == n and by["copy"].bytes_moved == 2 * n and by["triad"].bytes_moved == 3 * n
    for p in found:
        _rates_positive(p)
        row = p.to_dict()
        assert row["GB/s"] == pytest.approx(p.bytes_moved / p.seconds / 1e9)


@pytest.mark.parametrize("dtype", probes.PROBE_DTYPES)
def test_matrix_probe_every_dtype(dtype):
    mv = probes.probe_matrix(dtype, tokens=1, k=64, n=96, repeats=1, min_time_s=0)
    mm = probes.probe_matrix(dtype, tokens=32, k=64, n=96, repeats=1, min_time_s=0)
    assert (mv.name, mm.name) == ("matvec", "matmul")
    elt = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}[dtype]
    out = 4 if dtype == "int8" else elt
    x = 4 if dtype == "int8" and onednn.int8_kernel("cpu") == onednn.FBGEMM else elt  # fp32 activations
    assert mm.flops == 2 * 32 * 64 * 96
    assert mm.bytes_moved == 96 * 64 * elt + 32 * 64 * x + 32 * 96 * out
    for p in (mv, mm):
        _rates_positive(p)
        assert p.gflop_per_s > 0
    if dtype == "int8":  # the kernel the course's INT8 paths call: oneDNN's on x86, else fbgemm's or torch._int_mm
        assert mm.shape.endswith("(oneDNN int8 linear)" if onednn.onednn_unsupported() is None else
                                 f"({_refused_kernel()})")


def test_matvec_cycles_through_enough_weights_to_defeat_caches():
    p = probes.probe_matrix("fp32", tokens=1, k=256, n=256, repeats=1, min_weight_mib=1)
    assert p.shape.endswith("x4 weights")  # 256 KiB each, 4 of them = 1 MiB
    assert p.bytes_moved == 4 * (256 * 256 * 4 + 256 * 4 + 256 * 4)


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="unknown probe dtype"):
        probes.probe_matrix("fp8", 1, 64, 64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_cuda_probes_skip_with_a_reason_without_a_gpu():
    assert "CUDA not available" in probes.device_skip_reason("cuda")
    assert probes.device_skip_reason("cpu") is None
    skipped = probes.probe_bandwidth(mib=1, device="cuda") + [probes.probe_matrix("bf16", 1, 64, 64, device="cuda")]
    assert all(p.skipped and p.timing is None and p.gb_per_s is None for p in skipped)
    summary = probes.summarize_probes(skipped)
    assert "cuda" not in summary and summary["skipped"]


def test_run_probes_summary_and_agreement():
    kw = dict(devices=("cpu", "cuda"), bandwidth_mib=1, k=64, n=64, prefill_tokens=16, repeats=1,
              progress=False, min_time_s=0)
    first, second = probes.run_probes(**kw), probes.run_probes(**kw)
    assert len(first) == 2 * (3 + 2 * len(probes.PROBE_DTYPES))
    rows = probes.probe_agreement(first, second)
    assert rows and all(r["ratio"] > 0 for r in rows)
    cpu = probes.summarize_probes(first + second)["cpu"]
    reads = [cpu["bandwidth_gbps"][k] for k in ("read", "copy", "triad")] + list(cpu["matvec_gbps"].values())
    assert cpu["bandwidth_gbps"]["best"] == max(reads)  # no kernel measured here reads faster than the floor's rate
    best = cpu["bandwidth_gbps"]["best_probe"]
    assert cpu["bandwidth_gbps"]["best"] == (cpu["matvec_gbps"][best.split()[1]] if best.startswith("matvec")
                                             else cpu["bandwidth_gbps"][best])
    assert set(cpu["matmul_gflops"]) == set(probes.PROBE_DTYPES) and all(v > 0 for v in cpu["matmul_gflops"].values())
    with pytest.raises(ValueError, match="differ"):
        probes.probe_agreement(first, list(reversed(second)))


def test_disk_probe(tmp_path):
    d = storage.probe_disk(tmp_path, mib=2, repeats=1)
    assert d["bytes"] == 2 * 2**20
    assert d["write_gbps"] > 0 and d["cold_read_gbps"] > 0 and d["warm_read_gbps"] > 0
    assert list(tmp_path.iterdir()) == []  # the probe file is removed


def test_loading_probe_in_fresh_processes(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.randn(256, 1024), "b": torch.randn(1024).to(torch.bfloat16)}, str(path))
    rows = storage.probe_loading(path, repeats=1)
    assert [r["method"] for r in rows] == list(storage.LOAD_METHODS)
    for r in rows:
        assert r["file_bytes"] == path.stat().st_size
        assert r["first_s"] > 0 and r["repeat_s"] > 0 and r["peak_rss_growth_bytes"] >= 0
    assert [r["user_copies"] for r in rows] == [0, 1, 2]


def test_generation_probe_on_a_tiny_model():
    from transformers import AutoModelForCausalLM

    from labkit.core.models import ShapeSpec, config_for

    spec = ShapeSpec("tiny", "llama", 64, 176, 2, 4, 2, 300, 256, 10000.0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_for(spec, 2)).eval()
    ids = torch.randint(3, 300, (1, 12))
    r = probes.probe_generation(model, ids, new_tokens=4, repeats=1)
    assert r["prompt_tokens"] == 12 and r["decode_context"] == 14
    assert r["prefill_s"] > 0 and r["tpot_s"] > 0 and r["ttft_s"] > 0


def test_probe_figure_has_a_bar_per_measured_probe():
    """Notebook 01's "01_probes" figure: GB/s bars for the streaming and matrix-vector probes, GFLOP/s bars for the
    matrix-matrix ones; skipped probes draw nothing."""
    import matplotlib

    matplotlib.use("Agg")
    from labkit.lessons.hardware_profile import plot_probes

    measured = probes.run_probes(devices=("cpu", "cuda"), bandwidth_mib=1, k=32, n=32, prefill_tokens=8,
                                 dtypes=("fp32",), repeats=1, progress=False, min_time_s=0)
    done = [p for p in measured if not p.skipped]
    fig = plot_probes(measured)
    left, right = fig.axes
    assert len(left.patches) == sum(p.name != "matmul" for p in done)
    assert len(right.patches) == sum(p.name == "matmul" for p in done) == 1
    assert [b.get_width() for b in right.patches] == pytest.approx([p.gflop_per_s for p in done if p.name == "matmul"])


def test_hardware_still_offers_the_names_other_modules_import_from_it():
    """roofline, planner, kernels, memory and the case study import these through labkit.core.hardware."""
    from labkit.core import hardware

    assert hardware.run_probes is probes.run_probes and hardware.summarize_probes is probes.summarize_probes
    assert hardware.Probe is probes.Probe and hardware.matrix_kernel is probes.matrix_kernel
    assert hardware.onednn_unsupported is onednn.onednn_unsupported
    assert hardware.onednn_op_unsupported is onednn.onednn_op_unsupported


def _probe(rate_gbps: float) -> probes.Probe:
    """A read probe of 1 GB at `rate_gbps`: a run of a machine whose neighbour may slow it."""
    return probes.Probe("read", "cpu", "fp32", "1 GB", bytes_moved=10**9, flops=0,
                        timing=Timing(cold_s=1 / rate_gbps, times_s=[1 / rate_gbps]))


def _baseline() -> dict:
    return {"decode_context": 512, "prompt_tokens": 512, "tpot_s": 1.0, "prefill_s": 1.0}


def test_a_busy_neighbour_makes_the_profile_unreliable_and_it_is_stored_so():
    runs = iter([10.0, 4.0, 9.0])  # every run disagrees with the one before: the neighbour never leaves
    got = probes.run_until_agree(max_runs=3, run=lambda **_: [_probe(next(runs))])
    assert len(got.runs) == 3 and not got.reliable and "UNRELIABLE" in got.words()
    summary = probes.summarize_probes(got.all())
    assert summary["cpu"]["bandwidth_gbps"]["read"] == pytest.approx(10.0)  # the fastest run, not the mean
    card = planner.profile_card(summary, _baseline(), models.shape("tinyllama-1.1b"), "fp32", 1,
                                roofline.this_machine(summary, "cpu"), agreement=got.agreement,
                                runs=len(got.runs), bar=got.bar)
    assert card["reliable"] is False and "UNRELIABLE" in planner.profile_note(card)


def test_an_unreliable_profile_says_whether_others_were_busy(monkeypatch):
    runs = iter([10.0, 4.0, 9.0])
    got = probes.run_until_agree(max_runs=3, run=lambda **_: [_probe(next(runs))])
    assert got.load is not None and "seconds" in got.load  # others' share was watched over the runs
    quiet, busy = dataclasses.replace(got, load={"others_cpu_share": 0.01}), dataclasses.replace(
        got, load={"others_cpu_share": 0.4})
    assert "used only 1% of the CPU" in quiet.words() and "a rerun may not help" in quiet.words()
    assert "used 40% of the CPU" in busy.words() and "rerun notebook 01 on a quiet machine" in busy.words()
    summary = probes.summarize_probes(got.all())
    card = planner.profile_card(summary, _baseline(), models.shape("tinyllama-1.1b"), "fp32", 1,
                                roofline.this_machine(summary, "cpu"), agreement=got.agreement,
                                runs=len(got.runs), bar=got.bar, others_cpu_share=0.01)
    assert "used only 1% of the CPU" in planner.profile_note(card)


def test_probes_rerun_until_two_runs_agree():
    runs = iter([10.0, 5.0, 5.2, 99.0])  # a neighbour arrives after run 1 and stays: runs 2 and 3 agree
    got = probes.run_until_agree(max_runs=4, run=lambda **_: [_probe(next(runs))])
    assert [round(r[0].gb_per_s, 1) for r in got.runs] == [10.0, 5.0, 5.2] and got.reliable
    assert probes.summarize_probes(got.all())["cpu"]["bandwidth_gbps"]["read"] == pytest.approx(10.0)
    runs = iter([10.0, 9.5, 1.0])
    got = probes.run_until_agree(max_runs=3, run=lambda **_: [_probe(next(runs))])
    assert len(got.runs) == 2 and got.reliable and "reliable" in got.words()
    assert planner.profile_note({"reliable": True}) is None
    with pytest.raises(ValueError, match="max_runs"):
        probes.run_until_agree(max_runs=1)


def _refused_kernel() -> str:
    """Where oneDNN's int8 linear is refused: fbgemm's dynamic int8 linear where the build has fbgemm."""
    return onednn.FBGEMM if "fbgemm" in torch.backends.quantized.supported_engines else "torch._int_mm"


def test_the_int8_probe_times_the_kernel_a_method_calls():
    """The case study times the kernel its INT8 stage calls: fbgemm's for quantize_dynamic, whatever the device's
    own int8 kernel is; the fbgemm step computes what a quantize_dynamic'd Linear computes."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        pytest.skip("no fbgemm in this build")
    call, flops, kernel = probes.matrix_kernel("int8", 8, 64, 32, method="int8-dynamic-legacy")
    assert kernel == onednn.FBGEMM and flops == 2 * 8 * 64 * 32 and call()["kernel_s"] > 0
    assert probes.matrix_kernel("int8", 8, 64, 32, method="int8-dynamic")[2] == "torch._int_mm"
    p = probes.probe_matrix("int8", 4, 64, 32, repeats=1, min_time_s=0.0)
    assert p.timing is not None and onednn.int8_kernel("cpu") in p.shape


def test_onednn_int8_is_refused_where_it_runs_far_slower_than_fp32(monkeypatch):
    """A oneDNN build with no optimized int8 kernel for the CPU falls back to reference code (0.09 GFLOP/s on an
    AMD EPYC with VNNI): the INT8 paths must then be told why and use fbgemm's or torch._int_mm, never time the
    fallback."""
    if onednn.onednn_op_unsupported("oneDNN's int8 linear", "onednn.qlinear_pointwise") is not None:
        pytest.skip("no oneDNN int8 linear in this build")
    monkeypatch.setattr(onednn, "int8_error", lambda: 0.0)  # correct results: only its speed is judged here
    monkeypatch.setattr(onednn, "int8_speed", lambda: (0.09, 80.0))
    reason = onednn.onednn_unsupported("cpu")
    assert reason and "0.09 GFLOP/s" in reason and "889x slower" in reason
    assert onednn.int8_kernel("cpu") == _refused_kernel()
    monkeypatch.setattr(onednn, "int8_speed", lambda: (300.0, 80.0))  # VNNI or AMX: faster than fp32
    assert onednn.onednn_unsupported("cpu") is None and onednn.int8_kernel("cpu") == "oneDNN int8 linear"


def test_onednn_int8_is_refused_where_its_results_are_wrong(monkeypatch):
    """On an AVX2-only EPYC (no VNNI) oneDNN's int8 linear returned products up to 8.4% off the exact integer
    matmul: a fast wrong kernel must be refused before its speed is even looked at."""
    if onednn.onednn_op_unsupported("oneDNN's int8 linear", "onednn.qlinear_pointwise") is not None:
        pytest.skip("no oneDNN int8 linear in this build")
    assert onednn.int8_error() >= 0  # the real kernel on this machine, measured once
    monkeypatch.setattr(onednn, "int8_speed", lambda: (300.0, 80.0))  # fast
    monkeypatch.setattr(onednn, "int8_error", lambda: 0.084)
    reason = onednn.onednn_unsupported("cpu")
    assert reason and "wrong results" in reason and "8.4%" in reason and onednn.int8_kernel("cpu") == _refused_kernel()
    monkeypatch.setattr(onednn, "int8_error", lambda: 1e-7)  # rounding only
    assert onednn.onednn_unsupported("cpu") is None


def test_the_int8_speed_check_measures_both_kernels():
    if onednn.onednn_op_unsupported("oneDNN's int8 linear", "onednn.qlinear_pointwise") is not None:
        pytest.skip("no oneDNN int8 linear in this build")
    int8, fp32 = onednn.int8_speed.__wrapped__(m=8, k=64, n=64)
    assert int8 > 0 and fp32 > 0


def test_the_table_shows_each_probes_fastest_run():
    runs = iter([4.0, 10.0, 9.8])
    got = probes.run_until_agree(max_runs=3, run=lambda **_: [_probe(next(runs))])
    assert [round(p.gb_per_s, 1) for p in got.best()] == [10.0]
