"""End to end: the default mask learns to keep the object, where the
authors' energy keeps every token. In seconds on token features made for
it; in minutes (slow) on frozen features of a pre-trained backbone
(benchmarks/mask_sweep.py, a reduced setting)."""

import json
import os
import sys

import keras
import numpy as np
import pytest

import keras_ersm
from keras_ersm import xla

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                "benchmarks"))

import mask_sweep  # noqa: E402

LEARNED = "keeping cost + hard concrete + mask mass"


@pytest.mark.slow
def test_the_default_mask_learns_on_a_pretrained_backbone(tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv("KERAS_ERSM_CACHE", str(tmp_path / "cache"))
    mask_sweep.main([
        "--output", str(tmp_path), "--seeds", "0", "--epochs", "10",
        "--test-examples", "500", "--pretrain-epochs", "8",
        "--only", LEARNED,
    ])
    with open(tmp_path / "mask_sweep.json") as file:
        rows = {row["name"]: row for row in json.load(file)["rows"]}
    learned = rows[LEARNED]["mask"]
    kept = learned["kept_fraction"]
    assert 0.01 < kept["mean"] < 0.6
    assert kept["relative_std"] > 0.2  # depends on the input
    assert learned["empty_images"] < 0.1
    # Far above the share of tokens on the object.
    assert learned["kept_on_object"] > 2 * learned["object_token_base_rate"]
    # Less reliance on the background than the unmasked baseline.
    assert rows[LEARNED]["drop"] < rows["baseline (no mask)"]["drop"] - 0.1


def object_and_background_tokens(rng, count, conflicting=False):
    """Features of a 6x6 token grid with a 2x2 object at a random place.

    Channels: object, background, the sign of a label, noise (all with
    noise of std 0.5). Object tokens carry the image's label; background
    tokens carry it in 90% of the images and a random label otherwise or,
    `conflicting`, the other label.

    Returns:
        `(x, y, on_object)`: (count, 6, 6, 4) features, labels and the
        (count, 6, 6) object tokens.
    """
    y = rng.integers(0, 2, count)
    if conflicting:
        background = 1 - y
    else:
        background = np.where(rng.random(count) < 0.9, y,
                              rng.integers(0, 2, count))
    on_object = np.zeros((count, 6, 6), bool)
    for image, (row, column) in enumerate(rng.integers(0, 5, (count, 2))):
        on_object[image, row:row + 2, column:column + 2] = True
    x = rng.normal(0.0, 0.5, (count, 6, 6, 4))
    x[..., 0] += on_object
    x[..., 1] += ~on_object
    x[..., 2] += np.where(on_object, 2 * y[:, None, None] - 1,
                          2 * background[:, None, None] - 1)
    return x.astype("float32"), y, on_object


def fit_on_tokens(mask):
    """`mask` before a pool and a linear head, fitted on token features:
    its hard masks of bias-conflicting images, which tokens of those are
    on the object, and the accuracy on them."""
    rng = np.random.default_rng(0)
    x, y, _ = object_and_background_tokens(rng, 512)
    test_x, test_y, on_object = object_and_background_tokens(
        rng, 256, conflicting=True)
    inputs = keras.Input((6, 6, 4))
    pooled = keras.layers.GlobalAveragePooling2D()(mask(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(pooled))
    model.compile(keras.optimizers.Adam(0.03),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # In plain TensorFlow ops: compiling the layer's XLA kernels would be
    # a third of the test's time, for the same numbers (test_energy_kernel:
    # test_xla_compiled_paths_match_plain_ops_on_the_same_noise).
    with xla.serving_trace():
        model.fit(x, y, batch_size=32, epochs=10, verbose=0)  # 160 steps
        kept = np.asarray(mask.explain(test_x)["mask"]) > 0.5
        logits = np.asarray(model(test_x))
    return kept, on_object, np.mean(np.argmax(logits, -1) == test_y)


def test_the_default_mask_learns_to_keep_the_object_in_seconds():
    # Unmasked, the pool follows the 32 background tokens against the 4 of
    # the object, and images whose background shows the other label are
    # misclassified (accuracy ~0); the mask must learn, from the 10% of
    # images whose background misleads, to keep the object alone.
    keras.utils.set_random_seed(0)
    kept, on_object, accuracy = fit_on_tokens(keras_ersm.EnergyMask())
    # Seeds 0-4: 7-8% of the tokens kept (the object is 11%), 82-90% of
    # them on the object, accuracy 0.86-0.96 against the background.
    assert 0.02 < kept.mean() < 0.2, kept.mean()
    on = kept[on_object].sum() / kept.sum()
    assert on > 0.7, on
    assert accuracy > 0.75, accuracy


def test_the_authors_energy_keeps_every_token_in_seconds():
    # Their energy has no minimum away from "keep all" on these tokens
    # (docs/mask_learning.md): the model reads the background, as it would
    # unmasked.
    keras.utils.set_random_seed(0)
    kept, _, accuracy = fit_on_tokens(
        keras_ersm.EnergyMask.from_preset("authors"))
    # Seeds 0-2: every token kept (masks >= 0.92), accuracy 0.0.
    assert kept.all()
    assert accuracy < 0.25, accuracy
