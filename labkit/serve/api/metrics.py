"""GET /metrics: the engine's numbers in Prometheus' text format, and the parser tests and notebooks read it with.

Names follow vLLM's (`vllm:num_requests_running` is `labkit:num_requests_running` here), so a dashboard or a
script written for one reads the other. The numbers come from `EngineLoop.snapshot`, one dict replaced whole by
the engine thread, so a scrape never sees half an update.
"""

from __future__ import annotations


def prometheus_text(snap: dict, model_name: str) -> str:
    """The engine's numbers in Prometheus' text format, named as vLLM names them (prefix `labkit:`)."""
    label = f'model_name="{model_name}"'
    total = max(snap["blocks_total"], 1)
    rows = [
        ("num_requests_running", "gauge", "Requests in the running batch (holding KV blocks).", snap["running"]),
        ("num_requests_waiting", "gauge", "Requests queued for admission.", snap["waiting"]),
        ("kv_cache_blocks_used", "gauge", "KV-cache blocks held by requests.", snap["blocks_used"]),
        ("kv_cache_blocks_total", "gauge", "KV-cache blocks in all.", snap["blocks_total"]),
        ("kv_cache_usage_perc", "gauge", "Fraction of the KV cache in use (1 = full).", snap["blocks_used"] / total),
        ("generation_tokens_total", "counter", "Tokens generated.", snap["generation_tokens"]),
        ("prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", snap["prompt_tokens"]),
        ("generation_tokens_per_second", "gauge", "Tokens generated per second over the last 10 s.",
         snap["tokens_per_s"]),
        ("engine_steps_total", "counter", "Engine steps (one scheduler iteration each).", snap["steps"]),
        ("engine_step_seconds_total", "counter", "Seconds spent inside engine steps.", snap["step_seconds"]),
    ]
    out = []
    for name, kind, doc, value in rows:
        out += [f"# HELP labkit:{name} {doc}", f"# TYPE labkit:{name} {kind}", f"labkit:{name}{{{label}}} {value}"]
    out += ["# HELP labkit:request_success_total Requests that ended, by how they ended.",
            "# TYPE labkit:request_success_total counter"]
    for reason in sorted(set(snap["ended"]) | {"length", "stop", "cancelled", "rejected"}):
        out.append(f'labkit:request_success_total{{{label},finished_reason="{reason}"}} {snap["ended"].get(reason, 0)}')
    return "\n".join(out) + "\n"


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text back to {name or name{finished_reason}: value} (for tests and the notebook)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, value = line.rsplit(" ", 1)
        name, _, labels = key.partition("{")
        reason = next((p.split("=", 1)[1].strip('"') for p in labels.rstrip("}").split(",")
                       if p.startswith("finished_reason=")), None)
        out[f"{name}{{{reason}}}" if reason else name] = float(value)
    return out

