"""keras_ersm.xla.serving_trace: the scope for tracing graphs for serving."""

import threading

import keras
import pytest

from conftest import relu_features
from keras_ersm import EnergyMask
from keras_ersm import xla


def test_serving_trace_nests_restores_and_is_per_thread():
    on_tensorflow = keras.backend.backend() == "tensorflow"
    assert not xla.tracing_for_serving()
    assert xla.compiling() == on_tensorflow
    seen = []
    with xla.serving_trace():
        assert xla.tracing_for_serving() and not xla.compiling()
        assert not xla.differentiating_forward()
        with xla.serving_trace(differentiate_forward=True):
            assert xla.tracing_for_serving() and xla.differentiating_forward()
            with xla.serving_trace():
                assert not xla.differentiating_forward()
            assert xla.differentiating_forward()
        assert xla.tracing_for_serving() and not xla.differentiating_forward()
        # Another thread is not inside this one's scope.
        thread = threading.Thread(
            target=lambda: seen.append(xla.tracing_for_serving())
        )
        thread.start()
        thread.join()
    assert seen == [False]
    assert not xla.tracing_for_serving()
    with pytest.raises(RuntimeError), xla.serving_trace(
            differentiate_forward=True):
        raise RuntimeError
    assert not xla.tracing_for_serving() and not xla.differentiating_forward()
    assert xla.compiling() == on_tensorflow


def test_masks_do_not_count_kept_fractions_in_the_scope():
    layer = EnergyMask(patch_size=2)
    x = relu_features((2, 4, 4, 8), seed=0)
    config = layer.get_config()
    with xla.serving_trace():
        layer(x)
    assert float(layer.kept_fraction.count) == 0
    # The layer itself is unchanged: it counts again outside the scope.
    assert layer.track_kept_fraction
    assert layer.get_config() == config
    layer(x)
    assert float(layer.kept_fraction.count) > 0


def test_a_per_position_bias_after_a_scalar_one_under_the_same_options():
    # Both layers share one compiled energy (same static options); tracing
    # it for the (h, w) bias after the scalar one must not relax the bias
    # to an unknown rank.
    x = relu_features((2, 4, 4, 3), seed=0)
    scalar = EnergyMask(seed=0)
    scalar(x, training=True)
    scalar(relu_features((3, 4, 4, 3), seed=1), training=True)
    per_position = EnergyMask(position_bias=True, seed=0)
    outputs = per_position(x, training=True)
    assert tuple(outputs.shape) == (2, 4, 4, 3)
    grids = per_position.explain(x)
    assert tuple(grids["mask"].shape) == (2, 4, 4)
