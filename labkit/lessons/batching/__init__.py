"""Notebook 05's experiment: one trace replayed against every server, metrics side by side, and what they mean.

One job per module: `servers` (the replays: `compare_servers`, the rate sweep, the bound the sequential replay
puts on batching, the engine's batch over time, the servers' table), `step` (where one decode step of the engine
goes, against its floors, naming the batch that actually ran), `prose` (the notebook's sentences and whether its
predictions held, built from this run's numbers) and `parameters` (the notebook's parameters, resolved, and the
served model). Everything the notebook, the tests and the course use is importable from here.
"""

from labkit.lessons.batching.parameters import load_model, resolve_parameters
from labkit.lessons.batching.prose import (
    best_case_line,
    held,
    itl_lines,
    one_ratio_words,
    prediction_line,
    queue_line,
    sweep_lines,
    token_cost_lines,
    what_this_means,
)
from labkit.lessons.batching.servers import (
    SERVER_VIEW,
    SERVERS,
    compare_servers,
    decode_step_s,
    engine_for,
    engine_ratio,
    occupancy,
    prefill_bound,
    rate_sweep,
    served_perplexity,
    server_view,
    versus_lines,
)
from labkit.lessons.batching.step import (
    STEP_PARTS,
    STEP_SHOWN,
    batch_words,
    plot_step_profile,
    profile_decode_step,
    step_floors,
    step_profile_sentence,
)

__all__ = ["SERVERS", "SERVER_VIEW", "STEP_PARTS", "STEP_SHOWN", "batch_words", "best_case_line", "compare_servers",
           "decode_step_s", "engine_for", "engine_ratio", "held", "itl_lines", "load_model", "occupancy",
           "one_ratio_words", "plot_step_profile", "prediction_line", "prefill_bound", "profile_decode_step",
           "queue_line", "rate_sweep", "resolve_parameters", "served_perplexity", "server_view", "step_floors",
           "step_profile_sentence", "sweep_lines", "token_cost_lines", "versus_lines", "what_this_means"]
