"""Notebook 03's experiment: every pruning method measured for quality and for real speed, side by side.

The technique lives in `labkit.techniques.prune` (`prune`, `to_sparse`); this package holds the loops that measure
it, one job per module: `variants` (what is pruned), `quality` (perplexity and token agreement on the trained
model), `speed` (prefill and decode on a shape-faithful model next to the roofline's prediction), `sweep` (where
torch's CSR kernel starts to beat the dense one), `recovery` (a short fine-tune of a structural cut), `tables`
and `figures` (the lesson's summary, targets, C7 inputs and plots) and `parameters` (the notebook's parameters,
resolved and checked). A variant this machine cannot run is a row "skipped: <reason>", never another variant's
numbers. Everything the notebook, the tests and the course use is importable from here.
"""

from labkit.lessons.pruning.figures import plot_loss, plot_quality_vs_sparsity, plot_quality_vs_speed, plot_sweep
from labkit.lessons.pruning.parameters import Settings, check_parameters, settings
from labkit.lessons.pruning.quality import activation_spread, evaluate, outlier_demo
from labkit.lessons.pruning.recovery import heldout_sample, recover, training_ids
from labkit.lessons.pruning.speed import benchmark, shape_of
from labkit.lessons.pruning.sweep import crossover, sparse_sweep
from labkit.lessons.pruning.tables import c7_inputs, config_dict, summary, targets, what_this_means
from labkit.lessons.pruning.variants import Variant, describe_achieved, variants

__all__ = ["Settings", "Variant", "activation_spread", "benchmark", "c7_inputs",
           "check_parameters", "config_dict", "crossover", "describe_achieved", "evaluate", "heldout_sample",
           "outlier_demo", "plot_loss", "plot_quality_vs_sparsity", "plot_quality_vs_speed", "plot_sweep", "recover",
           "settings", "shape_of", "sparse_sweep", "summary", "targets", "training_ids", "variants",
           "what_this_means"]
