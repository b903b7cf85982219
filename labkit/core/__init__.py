"""labkit.core: what every lesson stands on, and nothing lesson-specific.

models (load or build models, byte counts), hardware (what the machine is), probes and storage (what it can do:
bandwidth, matrix rates, disk and loading), onednn (which oneDNN kernels run here), bench (timing, rotating
rounds, serving metrics) and load (the load watch, threads), quality (perplexity, agreement), roofline and planner
(floors from bytes and FLOPs, will it fit, notebook 01's stored profile), records (JSON results), params
(parameter checks), units (bytes, dtype names, ratio words), progress, corpus and train_tiny (the embedded model's
recipe). Imports only from itself and the package root.
"""
