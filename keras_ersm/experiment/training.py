"""Training a run's model pair, resumable after a kill."""

import os
import shutil

import keras

from keras_ersm import graph
from keras_ersm import recipes
from keras_ersm.callbacks import MaskTensorBoard
from keras_ersm.experiment import run_folder
from keras_ersm.experiment.config import BENCHMARK_WEIGHTS
from keras_ersm.experiment.data import NUM_CLASSES
from keras_ersm.experiment.data import load_data
from keras_ersm.experiment.pair import build_pair
from keras_ersm.experiment.pair import check_trainable
from keras_ersm.experiment.pair import pretrain_backbone
from keras_ersm.experiment.phases import benchmark_phase
from keras_ersm.experiment.phases import phase


def train_pair(config, output_dir, *, resume=False, verbose=1,
               phases=None, tensorboard=None):
    """Train the baseline and the ERSM model; save both as `.keras`.

    With `resume=True`, a model whose `.keras` file exists is kept as it
    is, and an interrupted one continues from its last backup; options
    other than the run's are an error that lists them. A feature layer
    that the backbone lacks, or a `patch_size` that does not divide its
    feature map, fails before anything is written or loaded.

    `phases` (a `keras_ersm.progress.Phases`) announces building the
    offline benchmark (on its first run), pre-training, building the data
    and training each model; `verbose` is `fit`'s.
    With a folder `tensorboard`, both trainings log to it (see `train`).

    Returns:
        `(baseline, ersm, histories, data)`.
    """
    run_folder.check_can_start(config, output_dir, resume)
    check_trainable(config)
    run_folder.make_folder(output_dir, "output folder")
    benchmark_phase(phases, config, verbose)
    if config.weights == BENCHMARK_WEIGHTS:
        with phase(phases, "Pre-training the backbone (cached after the "
                    "first run)"):
            pretrain_backbone(config, verbose=verbose)
    with phase(phases, "Building the data"):
        data = load_data(config)
        baseline, ersm = build_pair(config, NUM_CLASSES[config.dataset])
    # Only now: a run that failed before training leaves the folder's
    # config (and the run it describes) as it was.
    run_folder.save_config(config, output_dir)
    histories = {}
    trained = []
    for model, title in ((baseline, "the baseline"),
                         (ersm, "the ERSM model")):
        path = os.path.join(output_dir, f"{model.name}.keras")
        if resume and os.path.exists(path):
            # Finished before the interruption: keep it as it was saved.
            with phase(phases, f"Keeping {title} trained before"):
                model = keras.saving.load_model(path)
        else:
            with phase(phases, f"Training {title}"):
                train(model, data, config, output_dir, resume=resume,
                      verbose=verbose, tensorboard=tensorboard)
                run_folder.save_whole(model, path)
        # Only once the model is saved (a kill while saving resumes from
        # the backup of the last epoch).
        shutil.rmtree(run_folder.backup_path(output_dir, model.name),
                      ignore_errors=True)
        # The log, not fit's History, spans the epochs of every attempt.
        histories[model.name] = run_folder.read_history(output_dir, model.name)
        trained.append(model)
    return trained[0], trained[1], histories, data


def train(model, data, config, output_dir, *, resume=False, verbose=1,
          tensorboard=None):
    """Fit `model` on `data["train"]`; history and backups in `output_dir`.

    `data["order"]`, when given, is the `EpochOrder` of `data["train"]`.
    With a folder `tensorboard`, `keras.callbacks.TensorBoard` logs the
    training to `tensorboard/<model name>`, and for a model with masks
    `keras_ersm.callbacks.MaskTensorBoard` its masks of the first
    `config.num_examples_shown` images of `data["test"]`.

    With `resume=True` training continues from the last backup in
    `output_dir/backup_<model name>` (written every epoch by
    `keras.callbacks.BackupAndRestore`) instead of restarting. The backup
    outlives `fit`: `train_pair` removes it once the model is saved, so
    that a kill while saving loses nothing.
    """
    steps_per_epoch = int(data["train"].cardinality())
    if steps_per_epoch < 1:
        steps_per_epoch = sum(1 for _ in data["train"])
    recipe = recipes.authors_recipe(
        max(1, steps_per_epoch * config.epochs),
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        steps_per_epoch=steps_per_epoch if config.epoch_schedule else None,
    )
    model.compile(**recipe)
    backup_dir = run_folder.backup_path(output_dir, model.name)
    if resume:
        run_folder.discard_unusable_first_backup(backup_dir)
    else:
        run_folder.check_not_interrupted(output_dir, model.name)
    callbacks = [
        # Before the backup: a run killed once a backup exists has logged
        # every epoch that the backup holds. Without a backup the model
        # starts from scratch, and so does its log.
        keras.callbacks.CSVLogger(
            os.path.join(output_dir, f"history_{model.name}.csv"),
            append=resume and os.path.isdir(backup_dir),
        ),
        # Left behind by an interrupted run, and kept after fit until the
        # model is saved (`train_pair`). Per epoch: Keras restarts a
        # resumed epoch from its first batch, so only epoch-boundary
        # backups resume exactly. The double checkpoint is the fallback for
        # a backup cut off while written.
        keras.callbacks.BackupAndRestore(
            backup_dir, save_freq="epoch", double_checkpoint=True,
            delete_checkpoint=False,
        ),
    ]
    if "order" in data:
        callbacks.append(data["order"])
    if tensorboard is not None:
        log_dir = os.path.join(tensorboard, model.name)
        callbacks.append(
            keras.callbacks.TensorBoard(log_dir, write_graph=False)
        )
        if graph.energy_masks(model):
            images, *_ = next(iter(
                data["test"].unbatch().batch(config.num_examples_shown)
            ))
            callbacks.append(MaskTensorBoard(log_dir, images))
    history = model.fit(
        data["train"], epochs=config.epochs, callbacks=callbacks,
        verbose=verbose,
        # The dataset is shuffled (`EpochOrder`); fit would warn that it
        # ignores its default shuffle=True for a tf.data.Dataset.
        shuffle=False,
    )
    return {key: [float(v) for v in values]
            for key, values in history.history.items()}
