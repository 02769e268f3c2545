"""Offline stand-ins for what the paper's datasets and ImageNet backbones
download: a tiny `oxford_iiit_pet` prepared by tfds's own builder, a
weights file served where Keras Applications would fetch its ImageNet
weights, and a guard that fails a test on any network connection."""

import os
import socket
import unittest.mock

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from keras.src.utils import file_utils

PETS = "oxford_iiit_pet"
# How the pets' trimaps mark the pixels.
PET, BACKGROUND, OUTLINE = 1, 2, 3


def forbid_network(monkeypatch):
    """Any socket connection or host lookup fails the test (an
    `AssertionError`, which no download code catches as a network
    error)."""

    def refused(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refused)
    monkeypatch.setattr(socket.socket, "connect_ex", refused)
    monkeypatch.setattr(socket, "getaddrinfo", refused)


def _pet_trimap(height, width, index):
    """A trimap with a box of pet, ringed by its outline, at a position
    that depends on `index`."""
    trimap = np.full((height, width, 1), BACKGROUND, np.uint8)
    top, left = index % (height // 3), (2 * index) % (width // 3)
    bottom, right = top + height // 2, left + width // 2
    trimap[top:bottom, left:right] = OUTLINE
    trimap[top + 1:bottom - 1, left + 1:right - 1] = PET
    return trimap


def prepare_fake_pets(data_dir, num_train=8, num_test=8, shape=(40, 48)):
    """Prepares `oxford_iiit_pet` in `data_dir` with tfds's own builder
    for it (same name, version, features and example code), from tiny
    files laid out as its two archives are, without any download.

    Each example has a random JPEG image of `shape` (height, width), its
    own label (example i of a split has label i) and a trimap
    (`_pet_trimap`).

    Returns:
        {split: {label: trimap}}, the uint8 trimaps `(height, width, 1)`.
    """
    archives = os.path.join(data_dir, "fake_pets_archives")
    images = os.path.join(archives, "images", "images")
    annotations = os.path.join(archives, "annotations", "annotations")
    os.makedirs(images)
    os.makedirs(os.path.join(annotations, "trimaps"))
    builder = tfds.builder(PETS, data_dir=data_dir)
    labels = builder.info.features["label"].names
    rng = np.random.default_rng(0)
    trimaps = {}
    for split, count, listing in (("train", num_train, "trainval.txt"),
                                  ("test", num_test, "test.txt")):
        trimaps[split] = {}
        lines = []
        for label in range(count):
            name = f"{labels[label]}_{1000 + label}"
            image = rng.integers(0, 256, (*shape, 3), np.uint8)
            tf.io.write_file(os.path.join(images, f"{name}.jpg"),
                             tf.io.encode_jpeg(image))
            trimap = _pet_trimap(*shape, label)
            tf.io.write_file(os.path.join(annotations, "trimaps",
                                          f"{name}.png"),
                             tf.io.encode_png(trimap))
            trimaps[split][label] = trimap
            # name, class id, species id (1-based), breed id.
            lines.append(f"{name} {label + 1} {label % 2 + 1} 1\n")
        with open(os.path.join(annotations, listing), "w") as file:
            file.writelines(lines)
    extracted = {"images": os.path.dirname(images),
                 "annotations": os.path.dirname(annotations)}
    with unittest.mock.patch.object(
        tfds.download.DownloadManager, "download_and_extract",
        lambda self, urls: {key: extracted[key] for key in urls},
    ):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                try_download_gcs=False))
    return trimaps


def serve_fake_imagenet_weights(monkeypatch, directory, backbone="ResNet50",
                                seed=123):
    """Makes `weights="imagenet"` load a local file for `backbone`.

    A file under the name Keras Applications fetches cannot stand in for
    the real weights in `$KERAS_HOME/models`: `keras.utils.get_file`
    checks its hash and downloads again. So this replaces `get_file`
    (where Keras Applications call it), for that file name only, by the
    path of weights of the same architecture, initialised under `seed`;
    the rest of `weights="imagenet"` (the file name, loading the weights
    into the model) is Keras's own. Any other file requested fails the
    test.

    Returns:
        (model, requested): the model whose weights the file holds, and the
        list of the file names requested so far.
    """
    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, backbone)(
        include_top=False, weights=None, input_shape=(32, 32, 3))
    requested = []
    # Keras Applications' file name of these weights, e.g.
    # resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5.
    names = {"ResNet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop"
                         ".h5"}
    path = os.path.join(directory, names[backbone])
    # The legacy HDF5 layout of Keras Applications' weight files.
    keras.saving.save_model(model, path)

    def get_file(fname=None, origin=None, *, cache_subdir="datasets",
                 file_hash=None, **kwargs):
        requested.append(fname)
        assert (fname, cache_subdir) == (names[backbone], "models"), fname
        assert origin.endswith("/" + fname) and file_hash, origin
        return path

    monkeypatch.setattr(file_utils, "get_file", get_file)
    return model, requested
