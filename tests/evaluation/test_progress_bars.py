"""The evaluation functions' progress bars (`verbose`)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ersm import evaluation

from ersm_test_models import REGION
from ersm_test_models import region_baseline_model
from ersm_test_models import region_ersm_model


def dataset(batches=3, unknown_size=False):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (4 * batches, 4, 4, 1)).astype("float32")
    labels = np.arange(4 * batches) % 2
    masks = np.broadcast_to(REGION, (4 * batches, 4, 4))
    data = tf.data.Dataset.from_tensor_slices((images, labels, masks))
    if unknown_size:
        data = data.filter(lambda *example: True)
    return data.batch(4)


def measure_all(verbose, data):
    ersm, baseline = region_ersm_model(), region_baseline_model()
    images_labels = data.map(lambda *example: example[:2])
    evaluation.top1_accuracy(ersm, images_labels, verbose=verbose)
    evaluation.sparsity_statistics(ersm, images_labels, verbose=verbose)
    evaluation.deletion_curves(
        ersm, images_labels, baseline=baseline, steps=4, verbose=verbose,
        orders=("learned", "magnitude", "random", "gradcam"))
    evaluation.occlusion_robustness(ersm, images_labels, (0.1, 0.5),
                                    verbose=verbose)
    evaluation.object_occlusion(ersm, data, verbose=verbose)
    evaluation.localization_scores(evaluation.ersm_maps(ersm), data,
                                   verbose=verbose)
    evaluation.background_reliance(ersm, images_labels, images_labels,
                                   verbose=verbose)


@pytest.mark.parametrize("unknown_size", [False, True])
def test_a_log_gets_one_plain_line_per_pass(unknown_size, capsys):
    measure_all(2, dataset(unknown_size=unknown_size))
    out = capsys.readouterr().out
    assert "\r" not in out and "\x1b" not in out and "\b" not in out
    lines = out.splitlines()
    # accuracy, sparsity, deletion, occlusion, object occlusion,
    # localisation, and background reliance's two splits.
    assert len(lines) == 8, lines
    assert all(line.startswith("3/3 - ") for line in lines), lines
    assert "batch - accuracy: " in lines[0]
    for order in ("learned", "magnitude", "random", "gradcam"):
        assert f" - {order}: " in lines[2]
    for value in ("clean", "10%", "50%"):
        assert f" - {value}: " in lines[3]
    assert " - covered: " in lines[4]


def test_a_terminal_bar_advances_batch_by_batch(capsys):
    evaluation.top1_accuracy(region_ersm_model(),
                             dataset().map(lambda *example: example[:2]),
                             verbose=1)
    out = capsys.readouterr().out
    assert out.endswith("\n") and "3/3" in out


def test_silent_by_default_and_verbose_checked(capsys):
    data = dataset().map(lambda *example: example[:2])
    evaluation.top1_accuracy(region_ersm_model(), data)
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match=r"`top1_accuracy`: argument "
                       r"`verbose` must be one of \(0, 1, 2\); received 3\."):
        evaluation.top1_accuracy(region_ersm_model(), data, verbose=3)
