"""Interrupt training mid-epoch, resume with `BackupAndRestore`; save all.

Usage: python resume_check.py OUT.npz WORK_DIR

Saves the final weights of an uninterrupted run ("reference/") and, for each
`save_freq` in ("epoch", 2), of a run killed at batch 1 of epoch 1 (by a
callback raising, after the backup callback ran) and then restarted in a
fresh model with different initial weights ("epoch/", "steps/"), plus the
epochs the restarted `fit` ran. Op determinism is process-wide, hence a
process of its own.
"""

import os
import sys

import keras
import numpy as np
import tensorflow as tf
import tiny

tf.config.experimental.enable_op_determinism()

EPOCHS = 3
BATCH_SIZE = 4
KILL_AT = (1, 1)  # (epoch, batch)


class Killed(Exception):
    pass


class KillAt(keras.callbacks.Callback):
    """Raises `Killed` at the end of batch `batch` of epoch `epoch`."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.kill_at = (epoch, batch)
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.kill_at:
            raise Killed(f"killed at epoch {self.epoch}, batch {batch}")


def fit(model, images, labels, callbacks=()):
    # No shuffling: a restarted `fit` sees each epoch's batches in the same
    # order as the uninterrupted run.
    return model.fit(
        images,
        labels,
        batch_size=BATCH_SIZE,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=list(callbacks),
    )


def new_model(seed):
    model = tiny.build_model(seed=seed)
    tiny.compile_for_classification(model)
    return model


def main(path, work_dir):
    keras.utils.set_random_seed(0)
    images, labels = tiny.data(16)
    arrays = {}
    reference = new_model(seed=0)
    fit(reference, images, labels)
    for index, weight in enumerate(reference.get_weights()):
        arrays[f"reference/weight_{index}"] = weight

    for name, save_freq in (("epoch", "epoch"), ("steps", 2)):
        backup_dir = os.path.join(work_dir, name)
        interrupted = new_model(seed=0)
        try:
            fit(
                interrupted,
                images,
                labels,
                [
                    keras.callbacks.BackupAndRestore(
                        backup_dir, save_freq=save_freq
                    ),
                    KillAt(*KILL_AT),
                ],
            )
            raise AssertionError("the run was not interrupted")
        except Killed:
            pass
        # The restarted process builds its model from scratch.
        restarted = new_model(seed=7)
        history = fit(
            restarted,
            images,
            labels,
            [keras.callbacks.BackupAndRestore(backup_dir, save_freq=save_freq)],
        )
        arrays[f"{name}/epochs_run"] = np.asarray(history.epoch)
        for index, weight in enumerate(restarted.get_weights()):
            arrays[f"{name}/weight_{index}"] = weight
    np.savez(path, **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
