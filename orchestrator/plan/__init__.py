"""`symsweep plan`: projected compute and wall time of a sweep, from unit costs measured here.

measure.py times the unit costs (an SGD step, a forward image, an eta_0 product, a kernel
pair, a regression solve) and `make_plan` projects them; model.py is the cost model (trial
shapes, memory, cells sharing one propagation, list scheduling onto G devices); report.py
prints the table. The command itself is `orchestrator.cli.plan`.
"""

from orchestrator.plan.measure import (
    load_units,
    make_plan,
    measure_kernel,
    measure_train,
    measure_units,
    save_units,
)
from orchestrator.plan.model import (
    CIFAR_SIZES,
    ETA0_INITS,
    ETA0_SAMPLES,
    LANCZOS_ITERS,
    NUM_CLASSES,
    Plan,
    TrialCost,
    Unit,
    data_sizes,
    image_shape,
    kernel_key,
    kernel_pairs,
    propagation_key,
    share_propagations,
    tile_archs,
    tile_options,
    train_key,
    trial_cost,
    trial_memory,
    wall_time,
)
from orchestrator.plan.report import format_plans

__all__ = [
    "CIFAR_SIZES", "ETA0_INITS", "ETA0_SAMPLES", "LANCZOS_ITERS", "NUM_CLASSES", "Plan",
    "TrialCost", "Unit", "data_sizes", "format_plans", "image_shape", "kernel_key",
    "kernel_pairs", "load_units", "make_plan", "measure_kernel", "measure_train",
    "measure_units", "propagation_key", "save_units", "share_propagations", "tile_archs",
    "tile_options", "train_key", "trial_cost", "trial_memory", "wall_time",
]
