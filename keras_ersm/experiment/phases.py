"""The phases a run announces ("[3/13] Training the ERSM model")."""

import contextlib

from keras_ersm import validation
from keras_ersm.datasets import BENCHMARK_NAME
from keras_ersm.experiment.config import BENCHMARK_WEIGHTS
from keras_ersm.experiment.data import OBJECT_MASK_DATASETS
from keras_ersm.experiment.data import benchmark_to_build
from keras_ersm.experiment.data import build_run_benchmark

BENCHMARK_PHASE = "Building the offline benchmark (first run only)"


def count_phases(config, command):
    """How many phases `ersm <command>` announces for a run of `config`.

    A new phase (`with phase(phases, name):`) is counted here. Building
    the offline benchmark is counted only while it is not built in tfds's
    data directory (`benchmark_to_build`): a later run has one phase less.

    Args:
        config: the run's `ExperimentConfig`.
        command: `"demo"`, `"train"` or `"evaluate"`.

    Returns:
        The `total` of the run's `keras_ersm.progress.Phases`.
    """
    # Building the offline benchmark where it is not yet built (so a later
    # run announces one phase less), before any command reads it.
    first_run = int(benchmark_to_build(config))
    # Pre-training the backbone where needed, building the data, then
    # training (or keeping) each model.
    training = first_run + 3 + (config.weights == BENCHMARK_WEIGHTS)
    # Accuracy, sparsity, deletion both ways, occlusion; with object masks
    # the object's box, where the kept tokens fall, localisation, PxAP and
    # validated IoU, occlusion relative to the object; on the benchmark
    # background reliance; then the report.
    evaluating = (
        5 + 5 * (config.dataset in OBJECT_MASK_DATASETS)
        + (config.dataset == BENCHMARK_NAME) + 1
    )
    counts = {
        "demo": training + 1 + evaluating,  # and the export
        "train": training,
        "evaluate": first_run + 1 + evaluating,  # loading the run first
    }
    validation.check_choice("count_phases", "command", command,
                            list(counts))
    return counts[command]


def phase(phases, name):
    """`phases.phase(name)`, or nothing to announce without `phases`."""
    return contextlib.nullcontext() if phases is None else phases.phase(name)


def benchmark_phase(phases, config, verbose=0):
    """Render the offline benchmark that a run of `config` reads, as the
    phase `BENCHMARK_PHASE`, where it is not yet built
    (`benchmark_to_build`, as `count_phases` counts it); nothing otherwise.
    `verbose`: a Keras verbosity, nonzero to say what is rendered."""
    if benchmark_to_build(config):
        with phase(phases, BENCHMARK_PHASE):
            build_run_benchmark(config, verbose=bool(verbose))
