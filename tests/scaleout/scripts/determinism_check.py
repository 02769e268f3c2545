"""Seeded training runs with deterministic ops; save weights and masks.

Usage: python determinism_check.py OUT.npz SEED [SEED ...]

For each seed, in this one process: `keras.utils.set_random_seed(seed)`,
build the tiny model (with dropout, so the seeded random stream matters),
fit with shuffling, save the final weights and the masks of the training
images under `"<seed>/..."`. Op determinism is process-wide, hence a process
of its own.
"""

import sys

import keras
import numpy as np
import tensorflow as tf
import tiny

tf.config.experimental.enable_op_determinism()


def run(seed):
    keras.utils.set_random_seed(seed)
    images, labels = tiny.data(16)
    # Initial weights, dropout and shuffling all follow the global seed.
    model = tiny.build_model(
        seed=None, dropout=0.25, unary_weight=0.1, pairwise_weight=0.1
    )
    tiny.compile_for_classification(model)
    model.fit(images, labels, batch_size=4, epochs=2, shuffle=True, verbose=0)
    arrays = {"masks": tiny.masks(model, images)}
    for index, weight in enumerate(model.get_weights()):
        arrays[f"weight_{index}"] = weight
    return arrays


def main(path, seeds):
    arrays = {}
    for seed in seeds:
        for key, value in run(seed).items():
            arrays[f"{seed}/{key}"] = value
    np.savez(path, **arrays)


if __name__ == "__main__":
    main(sys.argv[1], [int(seed) for seed in sys.argv[2:]])
