"""Whole runs: `ersm demo` (train, export, evaluate) and `ersm export`."""

import os
import time

from keras_ersm.experiment import run_folder
from keras_ersm.experiment.evaluate import evaluate_and_report
from keras_ersm.experiment.phases import phase
from keras_ersm.experiment.training import train_pair
from keras_ersm.saved_model import export


def run_experiment(config, output_dir, *, resume=False, verbose=1,
                   phases=None, tensorboard=None):
    """Train, evaluate, export and report: `ersm demo`.

    Writes into `output_dir`: `config.json`, `metrics.json`, `report.md`,
    `report.html`, PNG figures, `baseline.keras`, `ersm.keras`, the ERSM
    SavedModel in `saved_model/` and the training histories.

    `phases` (a `keras_ersm.progress.Phases` of
    `count_phases(config, "demo")`) announces every phase; `verbose` is
    `fit`'s; `tensorboard`, a folder for TensorBoard logs (see `train`).

    Returns:
        The metrics dict written to `metrics.json`.
    """
    started = time.time()
    baseline, ersm, histories, data = train_pair(
        config, output_dir, resume=resume, verbose=verbose, phases=phases,
        tensorboard=tensorboard,
    )
    with phase(phases, "Exporting the ERSM model"):
        export(ersm, os.path.join(output_dir, "saved_model"))
    return evaluate_and_report(
        baseline, ersm, data, config, output_dir, histories, started,
        phases=phases,
    )


def export_run(output_dir, path, *, phases=None):
    """`ersm export`: the run's ERSM model as a SavedModel at `path`;
    `phases` announces the export."""
    run_folder.check_not_a_file(path, "SavedModel folder")
    with phase(phases, "Exporting the ERSM model"):
        (ersm,) = run_folder.load_models(output_dir, ("ersm",))
        run_folder.make_folder(path, "SavedModel folder")
        export(ersm, path)
    return path
