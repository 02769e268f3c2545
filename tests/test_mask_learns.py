"""End to end: the default mask learns to keep the object. In seconds on
token features made for it; in minutes (slow) on frozen features of a
pre-trained backbone, where the reference energy does not
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
def test_the_default_mask_learns_and_the_reference_stays_uniform(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("KERAS_ERSM_CACHE", str(tmp_path / "cache"))
    mask_sweep.main([
        "--output", str(tmp_path), "--seeds", "0", "--epochs", "10",
        "--test-examples", "500", "--pretrain-epochs", "8",
        "--only", "reference", LEARNED,
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
    reference = rows["reference"]["mask"]["kept_fraction"]
    assert reference["mean"] == 1.0 and reference["std"] == 0.0


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


def test_the_default_mask_learns_to_keep_the_object_in_seconds():
    # Straight on the tokens: mask, average pool, linear head. Unmasked,
    # the pool follows the 32 background tokens against the 4 of the
    # object, and images whose background shows the other label are
    # misclassified (accuracy ~0); the mask must learn, from the 10% of
    # images whose background misleads, to keep the object alone.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y, _ = object_and_background_tokens(rng, 512)
    test_x, test_y, on_object = object_and_background_tokens(
        rng, 256, conflicting=True)
    inputs = keras.Input((6, 6, 4))
    mask = keras_ersm.EnergyMask(name="mask")
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
    # Seeds 0-4: 7-8% of the tokens kept (the object is 11%), 82-90% of
    # them on the object, accuracy 0.86-0.96 against the background.
    assert 0.02 < kept.mean() < 0.2, kept.mean()
    on = kept[on_object].sum() / kept.sum()
    assert on > 0.7, on
    accuracy = np.mean(np.argmax(logits, -1) == test_y)
    assert accuracy > 0.75, accuracy
