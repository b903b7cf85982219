import torch

from labkit.core import hardware


def test_fingerprint_on_this_machine():
    fp = hardware.fingerprint()
    assert fp["logical_cores"] >= 1 and fp["usable_cores"] >= 1
    assert fp["memory_bytes"] > 2**30
    assert set(hardware.ISA_FLAGS) <= set(fp["isa"])
    assert all(isinstance(v, bool) for v in fp["isa"].values())
    assert fp["versions"]["torch"] == torch.__version__.split("+")[0] or fp["versions"]["torch"] == torch.__version__
    assert fp["gpus"] == hardware.gpu_info()
    assert "CPU" in hardware.describe(fp)


def test_isa_parsing_of_cpuinfo(monkeypatch):
    hardware.cpu_features.cache_clear()
    xeon = "model name\t: Intel Xeon\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8\n"
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: xeon)
    try:
        f = hardware.cpu_features()
        assert f["amx_bf16"] and f["amx_int8"] and f["avx512_vnni"] and not f["avx_vnni"]
        assert hardware.cpu_model() == "Intel Xeon"
        hardware.cpu_features.cache_clear()
        monkeypatch.setattr(hardware, "_cpuinfo", lambda: "Features\t: fp asimd evtstrm\n")
        f = hardware.cpu_features()
        assert f["neon"] and not f["avx2"] and not f["amx_bf16"]
    finally:
        hardware.cpu_features.cache_clear()


def test_cli_fingerprint_prints_features(capsys):
    from labkit.__main__ import main

    assert main(["fingerprint"]) == 0
    out = capsys.readouterr().out
    assert "ISA" in out and "Memory" in out
