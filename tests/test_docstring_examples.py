"""Every docstring example of keras_ersm runs and prints what it shows.

Each module's examples run with the module's own globals, the usual
imports (`keras`, `keras_ersm`, `np` for NumPy, `tf` for TensorFlow) and
the names below, which stand for what a user has at hand: a tiny ERSM
classifier `model` and its `baseline` (the same backbone and head, no
mask), a batch of `images` with their `labels` and ground-truth object masks
(`object_masks`), and datasets of them (`train`, `test`,
`test_with_object_masks`, `test_shuffled`).
Everything is built from fixed seeds, on 16x16 images, untrained: the
examples show what a function returns, not how well a model does.
"""

import doctest
import importlib
import pkgutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ersm

OPTION_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def module_names():
    return sorted(
        info.name
        for info in pkgutil.walk_packages(keras_ersm.__path__, "keras_ersm.")
    )


def tiny_backbone():
    """Two strided convolutions: 16x16x3 images to a 4x4x8 feature map."""
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same",
                            activation="relu")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same",
                            activation="relu", name="conv_last")(x)
    return keras.Model(inputs, x)


@pytest.fixture
def example_globals():
    """Built anew for each module: some examples train `model`."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(8, 16, 16, 3)).astype(np.float32)
    labels = np.arange(8, dtype=np.int32) % 2
    object_masks = np.zeros((8, 16, 16), np.float32)
    object_masks[:, 4:12, 4:12] = 1.0
    model = keras_ersm.build_classifier(tiny_backbone(), 2, patch_size=1)
    baseline_backbone = tiny_backbone()
    pooled = keras.layers.GlobalAveragePooling2D()(baseline_backbone.output)
    baseline = keras.Model(baseline_backbone.input,
                           keras.layers.Dense(2)(pooled))
    shuffled = images[::-1].copy()
    test = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    return {
        "keras": keras,
        "keras_ersm": keras_ersm,
        "np": np,
        "tf": tf,
        "images": images,
        "labels": labels,
        "object_masks": object_masks,
        "model": model,
        "baseline": baseline,
        "train": test,
        "test": test,
        "test_with_object_masks": tf.data.Dataset.from_tensor_slices(
            (images, labels, object_masks[..., None])
        ).batch(4),
        "test_shuffled": tf.data.Dataset.from_tensor_slices(
            (shuffled, labels)
        ).batch(4),
    }


@pytest.mark.parametrize("module_name", module_names())
def test_docstring_examples(module_name, example_globals, tmp_path,
                            monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write here
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=OPTION_FLAGS)
    for test in finder.find(module, module_name):
        test.globs = {**vars(module), **example_globals}
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} example(s) failed"
