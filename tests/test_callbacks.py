"""MaskTensorBoard: what its event files hold, read back."""

import collections
import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ersm
from keras_ersm.callbacks import MaskTensorBoard

pytest.importorskip("tensorboard")

MASKS = ("conv1_energy_mask", "energy_mask")
IMAGE_TAGS = ("overlay", "score", "keep", "energy", "mask")


def two_mask_classifier():
    """image (16x16x3) -> conv1 -> mask (8x8 tokens) -> conv2 -> mask
    (8x8 tokens) -> head (3)."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                            name="conv1")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same",
                            activation="relu", name="conv2")(x)
    backbone = keras_ersm.attach(
        keras.Model(inputs, x), "conv1", patch_size=2,
        score_kernel_initializer="random_normal",
    )
    return keras_ersm.build_classifier(
        backbone, 3, freeze_backbone=False, formulation="coherent",
        score_kernel_initializer="random_normal",
    )


def data(count=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (count, 16, 16, 3)).astype("float32")
    return images, np.arange(count) % 3


def read_events(folder):
    """{tag: [(step, plugin name, value as an array)]} of every summary
    in the event files of `folder`."""
    found = collections.defaultdict(list)
    for path in sorted(glob.glob(os.path.join(folder, "events.out.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found[value.tag].append((
                    event.step, value.metadata.plugin_data.plugin_name,
                    tf.make_ndarray(value.tensor),
                ))
    return found


def decoded_images(value):
    """The images of an image summary: [width, height, PNG, PNG, ...]."""
    width, height = int(value[0]), int(value[1])
    images = [tf.io.decode_png(png).numpy() for png in value[2:]]
    assert all(image.shape[:2] == (height, width) for image in images)
    return np.stack(images)


def test_logs_every_mask_of_the_model_each_epoch(tmp_path):
    model = two_mask_classifier()
    model.compile("adam", "sparse_categorical_crossentropy")
    images, labels = data()
    samples = images[:3]
    callback = MaskTensorBoard(tmp_path, samples)
    model.fit(images, labels, epochs=2, batch_size=4, verbose=0,
              callbacks=[callback])

    events = read_events(tmp_path / "masks")
    expected = {f"{mask}/{tag}" for mask in MASKS for tag in IMAGE_TAGS}
    expected |= {f"{mask}/{tag}" for mask in MASKS
                 for tag in ("keep_histogram", "kept_fraction")}
    assert set(events) == expected
    for tag, logged in events.items():
        assert [step for step, _, _ in logged] == [0, 1], tag
    for mask in MASKS:
        for tag in IMAGE_TAGS:
            for _, plugin, value in events[f"{mask}/{tag}"]:
                assert plugin == "images"
                shown = decoded_images(value)
                channels = 3 if tag == "overlay" else 1
                assert shown.shape == (3, 16, 16, channels), (tag,
                                                              shown.shape)
        (_, plugin, histogram), _ = events[f"{mask}/keep_histogram"]
        assert plugin == "histograms"
        # Every token of the three images: 8x8 tokens each.
        assert histogram[:, 2].sum() == 3 * 8 * 8

    # The last epoch's masks are the trained model's.
    for mask in MASKS:
        layer = model.get_layer(mask)
        features = keras.Model(model.input, layer.input)(samples)
        grids = {key: np.asarray(value)
                 for key, value in layer.explain(features).items()}
        _, plugin, fraction = events[f"{mask}/kept_fraction"][-1]
        assert plugin == "scalars"
        assert float(fraction) == pytest.approx(
            np.mean(grids["mask"] > 0.5))
        _, _, keep = events[f"{mask}/keep"][-1]
        # Nearest-neighbour upsampling: each token is a 2x2 pixel block.
        np.testing.assert_allclose(
            decoded_images(keep)[:, ::2, ::2, 0] / 255.0, grids["keep"],
            atol=1 / 255)

    # Logging updates no kept-fraction metric (the first mask runs to
    # feed the second).
    counts = [float(model.get_layer(mask).kept_fraction.count)
              for mask in MASKS]
    callback.on_train_begin()
    callback.on_epoch_end(2)
    callback.on_train_end()
    assert [float(model.get_layer(mask).kept_fraction.count)
            for mask in MASKS] == counts
    assert all(model.get_layer(mask).track_kept_fraction for mask in MASKS)


def test_works_under_mirrored_strategy_with_jit_compile(tmp_path):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        # Built on a list of one input, as `ersm`'s ERSM model.
        classifier = two_mask_classifier()
        model = keras.Model(classifier.inputs, classifier.outputs)
        model.compile("adam", "sparse_categorical_crossentropy",
                      jit_compile=True)
    images, labels = data()
    model.fit(images, labels, epochs=1, batch_size=4, verbose=0,
              callbacks=[MaskTensorBoard(tmp_path, images[:2])])
    events = read_events(tmp_path / "masks")
    for mask in MASKS:
        ((step, _, value),) = events[f"{mask}/overlay"]
        assert step == 0
        assert decoded_images(value).shape == (2, 16, 16, 3)


def test_a_model_without_masks_and_bad_images_are_refused(tmp_path):
    inputs = keras.Input((16, 16, 3))
    plain = keras.Model(inputs, keras.layers.Dense(3)(
        keras.layers.GlobalAveragePooling2D()(inputs)))
    plain.compile("sgd", "sparse_categorical_crossentropy")
    images, labels = data()
    with pytest.raises(ValueError, match="MaskTensorBoard: argument `model` "
                       "must be a model with an EnergyMask layer; received "
                       "model '.*', which has no EnergyMask layer."):
        plain.fit(images, labels, verbose=0,
                  callbacks=[MaskTensorBoard(tmp_path, images[:2])])
    callback = MaskTensorBoard(tmp_path, images[:2])
    callback.set_model(keras.Model([inputs, keras.Input((1,))], plain.output))
    with pytest.raises(ValueError, match="MaskTensorBoard: argument `model` "
                       "must be a model with one input; received model "
                       "'.*', which has 2 inputs. The callback feeds it one "
                       "batch of images."):
        callback.on_train_begin()
    with pytest.raises(ValueError, match=r"MaskTensorBoard: argument "
                       r"`images` must be a batch of images .*; received "
                       r"shape \(16, 16, 3\)\."):
        MaskTensorBoard(tmp_path, images[0])
    with pytest.raises(ValueError, match="MaskTensorBoard: argument "
                       "`log_dir` must be a folder path; received ''."):
        MaskTensorBoard("", images[:2])
