import numpy as np
import pytest
import tensorflow as tf

from keras_ersm.evaluation import accuracy
from keras_ersm.evaluation import background

from ersm_test_models import mean_threshold_model


def dataset(means, labels, one_hot=False):
    images = np.ones((len(means), 8, 8, 1), np.float32)
    images *= np.asarray(means, np.float32)[:, None, None, None]
    labels = np.asarray(labels, np.int32)
    if one_hot:
        labels = np.eye(2, dtype=np.float32)[labels]
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)


def test_accuracy_counts_top1():
    # Class 0 iff the mean > 0.5: predictions 0, 1, 0, 1, 0.
    data = dataset([0.9, 0.1, 0.6, 0.4, 0.7], [0, 1, 1, 1, 1])
    result = accuracy.top1_accuracy(mean_threshold_model(), data)
    assert result == {"accuracy": 0.6, "num_correct": 3, "num_images": 5}
    one_hot = dataset([0.9, 0.1], [0, 0], one_hot=True)
    result = accuracy.top1_accuracy(mean_threshold_model(), one_hot)
    assert result["accuracy"] == 0.5


def test_accuracy_reads_labels_of_shape_batch_by_one():
    # Integer labels (B, 1), Keras's and CIFAR's layout, are class indices,
    # not one-hot vectors of one class (which would make every label 0).
    # Predictions 0, 1, 0, 1, 0: 4 of these labels are right (3 if every
    # label were read as 0).
    means, labels = [0.9, 0.1, 0.6, 0.4, 0.7], [0, 1, 0, 1, 1]
    images = np.ones((5, 8, 8, 1), np.float32)
    images *= np.asarray(means, np.float32)[:, None, None, None]
    column = np.asarray(labels, np.int32)[:, None]
    data = tf.data.Dataset.from_tensor_slices((images, column)).batch(2)
    result = accuracy.top1_accuracy(mean_threshold_model(), data)
    assert result == {"accuracy": 0.8, "num_correct": 4, "num_images": 5}
    scalars = tf.data.Dataset.from_tensor_slices(
        (images, np.zeros((5, 1, 1), np.int32))
    ).batch(2)
    with pytest.raises(ValueError, match=r"`top1_accuracy`: argument "
                       r"`dataset` must be a dataset of labels "
                       r"`\(batch,\)`, .*; received labels of shape "
                       r"\(2, 1, 1\)\."):
        accuracy.top1_accuracy(mean_threshold_model(), scalars)


def test_accuracy_rejects_bad_datasets():
    with pytest.raises(ValueError, match=r"`top1_accuracy`: argument "
                       r"`dataset` must be a tf\.data\.Dataset; received "
                       r"\[array"):
        accuracy.top1_accuracy(mean_threshold_model(), [np.zeros((1, 8, 8, 1))])
    unbatched = tf.data.Dataset.from_tensor_slices(
        (np.zeros((2, 8, 8, 1), np.float32), np.zeros(2, np.int32))
    )
    with pytest.raises(ValueError, match=r"`top1_accuracy`: argument "
                       r"`dataset` must be a dataset of batched images "
                       r"\(batch, height, width, channels\); received images "
                       r"of shape \(8, 8, 1\)\. Batch the dataset first\."):
        accuracy.top1_accuracy(mean_threshold_model(), unbatched)


def test_background_reliance():
    test = dataset([0.9, 0.1, 0.6, 0.4], [0, 1, 0, 1])
    shuffled = dataset([0.9, 0.9, 0.6, 0.4], [0, 1, 1, 1])
    result = background.background_reliance(mean_threshold_model(), test,
                                             shuffled)
    assert result["test"] == 1.0 and result["test_shuffled"] == 0.5
    assert result["drop"] == 0.5
    assert result["num_images"] == {"test": 4, "test_shuffled": 4}


def test_dataset_elements_must_be_pairs_or_triples():
    images = np.zeros((2, 8, 8, 1), np.float32)
    singles = tf.data.Dataset.from_tensor_slices((images,)).batch(2)
    with pytest.raises(ValueError, match=r"`top1_accuracy`: argument "
                       r"`dataset` must be a dataset of `\(images, labels\)` "
                       r"or `\(images, labels, object_masks\)`; received "
                       r"elements"):
        accuracy.top1_accuracy(mean_threshold_model(), singles)


def test_fractional_class_labels_are_refused():
    images = np.ones((2, 8, 8, 1), np.float32)
    for labels, shown in ((np.array([0.0, 0.3]), "0.3"),
                          (np.array([[1.0], [0.3]]), "0.3"),
                          (np.array([1, -1]), "-1")):
        data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
        with pytest.raises(ValueError, match=r"`top1_accuracy`: argument "
                           r"`dataset` must be a dataset of class indices "
                           r"\(whole numbers >= 0\).*; received the "
                           rf"label {shown}\.$"):
            accuracy.top1_accuracy(mean_threshold_model(), data)
    whole = tf.data.Dataset.from_tensor_slices(
        (images, np.array([0.0, 1.0]))).batch(2)
    assert accuracy.top1_accuracy(mean_threshold_model(),
                                  whole)["num_images"] == 2


def test_background_reliance_names_the_empty_split():
    data = dataset([0.9, 0.1], [0, 1])
    with pytest.raises(ValueError, match=r"`background_reliance`: argument "
                       r"`test_shuffled` must be a non-empty dataset; "
                       r"received an empty one\."):
        background.background_reliance(mean_threshold_model(), data,
                                       data.take(0))
