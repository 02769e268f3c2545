"""The rules of a run folder: what a run writes, what may be resumed,
overwritten or loaded, and the errors that say why not."""

import json
import os
import shutil

import h5py
import keras

from keras_ersm.experiment.config import ExperimentConfig
from keras_ersm.mask_options import MaskOptions


# The models of a run, in the order they are trained and files named.
MODEL_NAMES = ("baseline", "ersm")


class RunFolderError(ValueError):
    """An output folder that cannot serve the command: no run in it to
    resume, evaluate or export, other options than its run's, an
    interrupted run that needs `--resume`, or a file in its place.
    `ersm` reports it as a usage error."""


# What a run leaves once it has trained a model; a new run would overwrite
# some and leave the others describing the old run.
RESULT_FILES = ("baseline.keras", "ersm.keras", "metrics.json")


def save_config(config, output_dir):
    """Write `config` as the run folder's `config.json`."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "config.json"), "w") as file:
        json.dump(config.to_dict(), file, indent=2)


def load_config(output_dir):
    """The `ExperimentConfig` a run folder was trained with."""
    path = os.path.join(output_dir, "config.json")
    if not os.path.exists(path):
        raise RunFolderError(
            f"{output_dir} is not a run folder (no config.json): run "
            f"`ersm train --output {output_dir}` first."
        )
    try:
        with open(path) as file:
            values = json.load(file)
        if not isinstance(values, dict):
            raise ValueError(f"a JSON {type(values).__name__}, not an object")
        # Mask options it does not name were the layer's defaults when it
        # was written, not the learned mask's.
        return ExperimentConfig.from_dict(MaskOptions.with_defaults(values))
    except (OSError, ValueError, TypeError) as error:
        raise RunFolderError(
            f"{path} is not the config of a run ({error}); it is written by "
            "`ersm train`: restore it, or train into another folder."
        ) from None


def check_no_results(output_dir):
    """Raise `RunFolderError` if `output_dir` holds a run's results."""
    found = [name for name in RESULT_FILES
             if os.path.exists(os.path.join(output_dir, name))]
    if not found:
        return
    # Without its config the run cannot be resumed.
    resume = (
        "resume it (`--resume` with the run's options; resume=True in "
        "Python) to keep and complete that run, or "
        if os.path.exists(os.path.join(output_dir, "config.json")) else ""
    )
    raise RunFolderError(
        f"{output_dir} holds the results of a run ({', '.join(found)}): "
        f"{resume}choose another output folder (or delete this one)."
    )


def check_not_a_file(path, what):
    """`RunFolderError` if a file is where the folder `path` (named as
    `what`) should be."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunFolderError(
            f"{path} is a file, not a folder: choose another {what}."
        )


def make_folder(path, what):
    """Create the folder `path` (and its parents); `RunFolderError` if it
    cannot be, naming it as `what`."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise RunFolderError(
            f"{path} cannot be used as the {what} ({error.strerror}): "
            "choose another folder."
        ) from None


def save_whole(model, path):
    """`model.save(path)`, so that `path` appears complete or not at all:
    a kill while writing leaves a partial file under another name, which
    `--resume` neither loads nor needs."""
    folder, name = os.path.split(path)
    partial = os.path.join(folder, f".partial_{name}")
    model.save(partial)
    os.replace(partial, path)


def load_models(output_dir, names=MODEL_NAMES):
    """The trained models `names` of a run folder."""
    paths = [os.path.join(output_dir, f"{name}.keras") for name in names]
    for path in paths:
        if not os.path.exists(path):
            raise RunFolderError(
                f"{path} is missing: train the run first with "
                f"`ersm train --output {output_dir}`."
            )
    return [keras.saving.load_model(path) for path in paths]


def backup_path(output_dir, model_name):
    """The folder of the backups of an interrupted training."""
    return os.path.join(output_dir, f"backup_{model_name}")


def check_not_interrupted(output_dir, model_name):
    """Raise `RunFolderError` if `output_dir` holds an interrupted
    training of `model_name`."""
    backup_dir = backup_path(output_dir, model_name)
    if os.path.isdir(backup_dir):
        raise RunFolderError(
            f"{backup_dir} holds the backup of an interrupted run: resume "
            "it (`--resume` of `ersm train` or `ersm demo`, with the run's "
            "options; resume=True in Python), or choose a new output "
            "folder."
        )


def discard_unusable_first_backup(backup_dir):
    """Remove a first backup that a kill cut off while it was written.

    Keras writes the weights, then the epoch in `training_metadata.json`;
    later backups fall back to the previous epoch's copy (the double
    checkpoint), but the first has none, and without its epoch Keras would
    train the restored weights from epoch 0 again.
    """
    weights = os.path.join(backup_dir, "latest.weights.h5")
    if not os.path.exists(weights) or os.path.exists(weights + ".bkp"):
        return
    metadata = os.path.join(backup_dir, "training_metadata.json")
    try:
        with h5py.File(weights, "r"):
            pass
        with open(metadata) as file:
            json.load(file)
    except (OSError, ValueError):
        shutil.rmtree(backup_dir)


def read_history(output_dir, name):
    """The per-epoch history that `train` logged for model `name`.

    The log keeps every attempt's rows: a run killed after logging an
    epoch but before backing it up logs that epoch again when resumed.
    The last row of each epoch is the one the saved model went through.
    """
    path = os.path.join(output_dir, f"history_{name}.csv")
    with open(path) as file:
        header, *rows = [line.strip().split(",") for line in file if line.strip()]
    epoch = header.index("epoch")
    last = {int(row[epoch]): row for row in rows}
    rows = [last[index] for index in sorted(last)]
    # CSVLogger adds "NA" val_* columns even when there is no validation.
    return {
        key: [float(row[index]) for row in rows]
        for index, key in enumerate(header)
        if key != "epoch" and any(row[index] != "NA" for row in rows)
    }


def check_can_start(config, output_dir, resume):
    """Raise `RunFolderError` unless a run of `config` may start in
    `output_dir`, or with `resume` continue the run there.

    A new run needs a folder (or nothing) without another run's backups or
    results; a resumed one needs the run's `config.json` with the same
    options (the error lists those that differ).
    """
    if not output_dir:
        raise RunFolderError("The output folder is an empty path: name a "
                             "folder.")
    check_not_a_file(output_dir, "output folder")
    if resume:
        if not os.path.exists(os.path.join(output_dir, "config.json")):
            raise RunFolderError(
                f"resume: {output_dir} holds no run to resume (no "
                "config.json); start the run without `--resume`."
            )
        saved = load_config(output_dir)
        if saved != config:
            saved_values, values = saved.to_dict(), config.to_dict()
            differences = "; ".join(
                f"{name}: {saved_values[name]!r} in the run, {value!r} now"
                for name, value in values.items()
                if saved_values[name] != value
            )
            raise RunFolderError(
                f"resume: the options differ from those of the run in "
                f"{output_dir} ({differences}); resume with the same "
                "options."
            )
    else:
        for name in MODEL_NAMES:
            check_not_interrupted(output_dir, name)
        check_no_results(output_dir)
