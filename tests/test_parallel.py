"""techniques.parallel: TP and PP compute what one process computes, the checks refuse what cannot work, and no rank
process outlives a launch, whatever happens to it. Ranks run on CPU cores with gloo (what CI has)."""

import copy
import multiprocessing
import os
import time

import psutil
import pytest
import torch

from labkit.core import models
from labkit.lessons import parallelism as pe
from labkit.techniques import parallel

WORLD = 2
needs_two_cores = pytest.mark.skipif(parallel.cores() < WORLD, reason="TP=2 and PP=2 need 2 CPU cores")


def _tiny_llama():
    """Like conftest's tiny_llama (a fixture cannot be called inside a rank): 2 layers, 4 heads, 2 KV heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def _ranks_alive() -> list:
    """Rank processes (spawned children) still running; multiprocessing's resource tracker is not one."""
    alive = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(p.cmdline()):
                alive.append(p)
        except psutil.Error:
            pass
    return alive + multiprocessing.active_children()


# ---------------------------------------------------------------- what runs on the ranks (module level: importable)

def _tp_pp_worker(ctx, new_tokens):
    model = _tiny_llama()
    ids = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    ref = parallel.greedy(model, ids, new_tokens)
    tp = parallel.tensor_parallel(copy.deepcopy(model), ctx.mesh)
    comm = parallel.CommTimer(tp)
    got = parallel.greedy(tp, ids, new_tokens, comm)
    pp_tokens, pp_first = parallel.pipeline_greedy(model, ctx, ids, new_tokens, microbatches=2)
    stage = parallel.stage_module(model, ctx.rank, ctx.world_size)
    from labkit.core.models import weight_bytes

    return {"ref": ref.tokens.tolist(), "tp": got.tokens.tolist(), "pp": pp_tokens.tolist(),
            "tp_logit_diff": (got.first_logits - ref.first_logits).abs().max().item(),
            "pp_logit_diff": None if pp_first is None else (pp_first - ref.first_logits).abs().max().item(),
            "comm_per_step": list(got.comm_per_step), "tp_kv": got.kv_bytes, "kv": ref.kv_bytes,
            "whole_bytes": weight_bytes(model), "tp_bytes": weight_bytes(tp), "stage_bytes": weight_bytes(stage),
            "threads": torch.get_num_threads()}


def _dies(ctx):
    if ctx.rank == 1:
        os._exit(3)  # no Python error, like the OOM killer's SIGKILL
    import torch.distributed as dist

    dist.barrier()  # rank 0 waits for a peer that is gone


def _raises(ctx):
    if ctx.rank == 1:
        raise ValueError("rank one cannot go on")
    import torch.distributed as dist

    dist.barrier()


def _hangs(ctx):
    time.sleep(600)


# ---------------------------------------------------------------- equality with one process

@needs_two_cores
def test_tp2_and_pp2_give_the_single_process_greedy_tokens_and_logits():
    new = 8
    ranks = parallel.launch(_tp_pp_worker, WORLD, new)
    for r in ranks:
        assert r["tp"] == r["ref"], "TP=2 changed the greedy tokens"
        assert r["pp"] == r["ref"], "PP=2 changed the greedy tokens"
        assert r["tp_logit_diff"] < 1e-5  # fp32: the all-reduce only changes the summation order
        assert r["threads"] == parallel.cores() // WORLD  # each rank got its share of the cores
    assert ranks[-1]["pp_logit_diff"] < 1e-5  # the last stage holds the logits
    r = ranks[0]
    # one all-reduce after attention and one after the MLP per layer, the embedding's all-reduce, the head's gather
    assert r["comm_per_step"][0] == 2 * 2 + 2
    assert r["tp_kv"] * WORLD == r["kv"]  # each rank caches its own heads
    assert abs(r["tp_bytes"] * WORLD / r["whole_bytes"] - 1) < 0.02  # only the norms are held twice
    assert abs(sum(x["stage_bytes"] for x in ranks) / r["whole_bytes"] - 1) < 1e-9  # stages partition the model
    assert not _ranks_alive()


# ---------------------------------------------------------------- failures: clear errors, nobody left running

@needs_two_cores
@pytest.mark.parametrize("fn, says", [(_dies, "rank 1 of 2 died (exit code 3)"),
                                      (_raises, "rank 1 of 2 failed: ValueError: rank one cannot go on")])
def test_a_failing_rank_is_named_and_every_rank_is_stopped(fn, says):
    with pytest.raises(parallel.RankFailed, match="all 2 processes have exited") as e:
        parallel.launch(fn, WORLD, timeout_s=120)
    assert says in str(e.value)
    assert not _ranks_alive()


@needs_two_cores
def test_a_hung_rank_is_stopped_at_the_timeout():
    t0 = time.monotonic()
    with pytest.raises(parallel.RankFailed, match="did not finish within 8 s"):
        parallel.launch(_hangs, WORLD, timeout_s=8)
    assert time.monotonic() - t0 < 60
    assert not _ranks_alive()


def test_a_world_larger_than_the_cores_is_refused_before_any_process_starts():
    before = len(_ranks_alive())
    n = parallel.cores() + 1
    with pytest.raises(parallel.ParallelError, match=f"world size {n} is more than the {n - 1} CPU cores here"):
        parallel.launch(_hangs, n)
    with pytest.raises(parallel.ParallelError, match="positive int"):
        parallel.check_world_size(0)
    assert len(_ranks_alive()) == before


def test_heads_layers_and_micro_batches_must_divide():
    cfg = _tiny_llama().config  # 4 heads, 2 KV heads, 2 layers
    assert parallel.check_tp(cfg, 2) == 2
    with pytest.raises(parallel.ParallelError, match=r"TP degree 4 must divide the 4 attention heads and the 2 KV "
                                                     r"heads.*choose one of \[1, 2\]"):
        parallel.check_tp(cfg, 4)
    for kind in ("qwen3_moe", "phi3"):  # stacked experts, fused q/k/v: the plan would not split them right
        with pytest.raises(parallel.ParallelError, match=f"a {kind} model is not split here"):
            parallel.check_tp(models.shape("qwen3-30b-a3b") if kind == "qwen3_moe" else
                              type("Cfg", (), {"model_type": kind, "num_attention_heads": 4,
                                               "num_key_value_heads": 2})(), 2)
    assert parallel.check_tp(models.shape("mistral-7b"), 2) == 2
    with pytest.raises(parallel.ParallelError, match=r"3 layers do not split into 2 pipeline stages.*\[1, 3\]"):
        parallel.check_stages(3, 2)
    with pytest.raises(parallel.ParallelError, match=r"a batch of 4 does not split into 3.*\[1, 2, 4\]"):
        parallel.check_microbatches(4, 3)


def test_the_notebooks_parameters_are_checked_at_once():
    from labkit.core.params import ParamError

    cfg = pe.lesson_config("ci", "llama-2-7b", "cpu", 0, WORLD)
    assert cfg.layers == 2 and cfg.micro_batches == [1, 2, 4] and max(cfg.message_bytes) == 64 * 2**20
    with pytest.raises(ParamError, match="layers must be >= 1, got 0"):
        pe.lesson_config("ci", "llama-2-7b", "cpu", 0, WORLD, layers=0)
    with pytest.raises(ParamError, match="seed must be int"):
        pe.lesson_config("ci", "llama-2-7b", "cpu", 1.5, WORLD)
    with pytest.raises(ParamError, match="unknown preset"):
        pe.lesson_config("fast", "llama-2-7b", "cpu", 0, WORLD)
    with pytest.raises(parallel.ParallelError, match="TP degree 2 must divide the 1 attention heads"):
        pe.lesson_config("ci", "llama-2-7b", "cpu", 0, WORLD, hidden_sizes=[64])  # given sizes are all checked


def test_the_lesson_checks_its_configuration_before_starting_ranks():
    with pytest.raises(parallel.ParallelError, match="pipeline stages"):
        pe.Config(layers=3).check()
    with pytest.raises(parallel.ParallelError, match="CPU cores"):
        pe.Config(world_size=parallel.cores() + 1).check()
    with pytest.raises(parallel.ParallelError, match="micro-batches"):
        pe.Config(pp_batch=4, micro_batches=[1, 3]).check()
    with pytest.raises(parallel.ParallelError, match="TP degree 3"):
        pe.Config(world_size=3, device="cpu").check() if parallel.cores() >= 3 else parallel.check_tp(
            pe.shape("llama-2-7b"), 3)


def test_tied_embeddings_cannot_split_the_vocabulary():
    from transformers import LlamaConfig, LlamaForCausalLM

    class Mesh:
        def size(self):
            return 2

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    with pytest.raises(parallel.ParallelError, match="shard_vocab=False"):
        parallel.tensor_parallel(LlamaForCausalLM(cfg), Mesh())


def test_collective_breakdown_tells_waiting_from_the_rest():
    # rank 1 arrives 0.5 s late at the first collective; at the second both arrive together, rank 1 ends later
    b = parallel.collective_breakdown([[(0.0, 1.0), (10.0, 11.0)], [(0.5, 1.0), (10.0, 12.0)]])
    assert b["collectives"] == 2 and b["ranks"] == 2
    assert b["median_wait_s"] == 0.0 and b["median_after_arrival_s"] == 0.75
    assert b["max_s"] == 2.0 and b["mean_s"] == pytest.approx((1.0 + 1.0 + 0.5 + 2.0) / 4)


def test_replicas_share_a_trace_without_overlap():
    items = list(range(7))
    shares = [parallel.replica_share(items, r, 3) for r in range(3)]
    assert sorted(x for s in shares for x in s) == items
    assert shares[0] == [0, 3, 6]


# ---------------------------------------------------------------- the experiment's arithmetic

def test_allreduce_fit_recovers_latency_and_bandwidth():
    lat, bw = 100e-6, 2e9  # bus bandwidth, bytes/s
    rows = [{"bytes": b, "seconds": lat + b * pe.bus_factor(2) / bw} for b in (4, 64, 1 << 20, 1 << 24)]
    fit = pe.allreduce_fit(rows, 2)
    assert fit["latency_s"] == pytest.approx(lat, rel=1e-3)
    assert fit["busbw_gbps"] == pytest.approx(bw / 1e9, rel=1e-3)
    assert pe.allreduce_time(fit, 1 << 20) == pytest.approx(rows[2]["seconds"], rel=1e-3)


def _rounds(names, values):
    return {"names": names, "cold": {}, "values": values, "load": {}}


def test_bubble_rows_put_the_measurement_next_to_gpipe_formula():
    res = {"pp": _rounds(["one process, all cores", "PP=2, 1 micro-batches", "PP=2, 4 micro-batches"], {
        "one process, all cores": {"s": [1.0, 1.0, 1.0]},
        "PP=2, 1 micro-batches": {"s": [2.0] * 3, "bubble": [0.5] * 3, "busy_max": [1.0] * 3,
                                  "max_logit_diff": [0.0] * 3},
        "PP=2, 4 micro-batches": {"s": [1.25] * 3, "bubble": [0.2] * 3, "busy_max": [1.0] * 3,
                                  "max_logit_diff": [0.0] * 3}})}
    rows = pe.bubble_rows(res, stages=2)
    assert [r["formula (S-1)/(M+S-1)"] for r in rows] == [0.5, 0.2]
    assert rows[0]["PP against one process"] == "2.00x slower"


def test_interconnect_budget_is_what_tp_saves_and_none_when_it_saves_nothing():
    names = ["one process, all cores", "one process, one rank's cores", "TP=2"]
    vals = {"one process, all cores": {"prefill": [0.10] * 3, "decode": [0.010] * 3},
            "one process, one rank's cores": {"prefill": [0.20] * 3, "decode": [0.020] * 3},
            "TP=2": {"prefill": [0.12] * 3, "decode": [0.013] * 3, "prefill_comm": [0.02] * 3,
                     "decode_comm": [0.002] * 3}}
    res = {"tp": _rounds(names, vals),
           "equality": {"comm_per_prefill": [4, 4 << 20], "comm_per_decode_step": [4, 4096]}}
    fit = {"latency_s": 1e-4, "busbw_gbps": 1.0, "world_size": 2}
    rows = {(r["phase"], r["against"]): r for r in pe.interconnect(res, fit)}
    one = rows[("prefill", "one process, one rank's cores")]
    assert one["budget ms"] == pytest.approx(100.0)  # 200 ms - TP's 100 ms of compute
    assert one["needed GB/s at zero latency"] == pytest.approx((4 << 20) / 0.1 / 1e9)
    assert rows[("decode", "one process, all cores")]["needed GB/s at zero latency"] is None  # 11 ms > 10 ms


def test_planner_tables_for_the_guides_sizes():
    rows = {r["model"]: r for r in pe.reference_rows()}
    assert rows["llama-2-70b"]["V100-16GB"].endswith("(TP 8 x PP 2)")  # 140 GB does not fit 8 x 16 GB
    assert rows["llama-2-13b"]["A100-80GB"] == "1 (TP 1)"
    need = {r["phase"].split()[0]: r for r in pe.link_need("llama-2-13b", "A100-80GB", 512)}
    assert need["prefill"]["needed GB/s at zero latency"] > need["decode"]["needed GB/s at zero latency"]
    assert need["prefill"]["collectives"] == 2 * 40


def test_pick_device_uses_nccl_on_enough_gpus_and_says_why_not_otherwise(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    dev, why = pe.pick_device("auto", 2)
    assert dev == "cpu" and "NCCL needs 2 CUDA GPUs, one per rank; this machine has 0" in why
    with pytest.raises(parallel.ParallelError, match="more than the 0 CUDA GPUs here"):
        pe.pick_device("cuda", 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pe.pick_device("auto", 2) == ("cuda", None)
    assert pe.pick_device("cpu", 2)[0] == "cpu"
    with pytest.raises(parallel.ParallelError, match="unknown device"):
        pe.pick_device("tpu", 2)


# ---------------------------------------------------------------- the lesson's whole run, small

@needs_two_cores
def test_the_lesson_runs_every_part_on_real_ranks_and_returns_its_tables():
    cfg = pe.Config(model="tinyllama-1.1b", layers=2, prompt_len=8, new_tokens=3, rounds=1, pp_batch=2, pp_len=8,
                    micro_batches=[1, 2], n_requests=2, output_len=(2, 3), message_bytes=[4, 4096],
                    hidden_sizes=[256, 128])
    res = pe.run(cfg)
    assert not _ranks_alive()
    assert res["equality"]["tp_tokens_equal"] and res["equality"]["pp_tokens_equal"]
    assert res["dp"]["dp_tokens_equal"]
    spec = pe.shape("tinyllama-1.1b")
    tab = pe.tp_table(res, spec, 2, _card(), 8, 3)
    assert set(tab["run"]) == {"one process, all cores", "one process, one rank's cores", "TP=2"}
    bub = pe.bubble_rows(res, 2)
    assert [r["micro-batches"] for r in bub] == [1, 2]
    assert len(pe.granularity_rows(res)) == 4
    fr = pe.split_fractions(res)
    assert fr["TP=2"] == pytest.approx(0.5, abs=0.01) and fr["DP=2"] == 1.0
    b = res["equality"]["collective_breakdown"]
    assert b["collectives"] == res["equality"]["comm_per_prefill"][0] * 3 and b["ranks"] == 2
    assert b["median_wait_s"] >= 0 and b["max_s"] >= b["median_s"]
    # the notebook's sentences and figures are built from these results without error
    fit = pe.allreduce_fit(res["allreduce"], 2)
    assert "**Decode step**" in pe.tp_story(tab, pe.interconnect(res, fit), fit, b)
    assert "greedy tokens" in pe.meaning(res, tab, bub, pe.dp_row(res), pe.memory_rows(res, spec, 2, 8))
    assert "of its" in pe.floor_notes(tab, spec, 2, _card(), 8, 3)
    import matplotlib

    matplotlib.use("Agg")
    for fig in (pe.plot_tp(tab), pe.plot_allreduce(res["allreduce"], fit), pe.plot_granularity(
            pe.granularity_rows(res)), pe.plot_bubble(bub)):
        matplotlib.pyplot.close(fig)


def _card():
    from labkit.core.roofline import Card

    return Card("test", 16, 10.0, {"fp32": 0.1}, measured=True)
