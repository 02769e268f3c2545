"""attach on shared and multi-output layers; the one-call, top-level
EnergyMask that mask_model and export need."""

import keras
import numpy as np
import pytest

import keras_ersm
from keras_ersm import graph
from keras_ersm import presets


def images(batch=2, seed=0):
    return np.random.default_rng(seed).uniform(
        0, 1, (batch, 6, 6, 4)).astype("float32")


def shared_conv_model():
    """`conv` is called twice, the second time on its own first output."""
    inputs = keras.Input((6, 6, 4))
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu",
                               name="conv")
    first = conv(inputs)
    second = conv(first)
    outputs = keras.layers.Concatenate(name="both")([first, second])
    return keras.Model(inputs, outputs)


def test_attach_after_a_shared_layer_applies_one_mask_after_every_call():
    base = shared_conv_model()
    # Soft masks, no scaling: the masked map is the features times the
    # mask, far from them.
    attached = keras_ersm.attach(
        base, "conv", score_kernel_initializer=keras.initializers.RandomNormal(
            stddev=2.0, seed=1),
        score_bias_initializer="zeros", **presets.mask_kwargs("authors"),
    )
    masks = graph.energy_masks(attached)
    assert [layer.name for layer in masks] == ["conv_energy_mask"]
    mask = masks[0]
    assert len(mask._inbound_nodes) == 2

    conv = attached.get_layer("conv")
    assert conv is base.get_layer("conv")

    def masked(features):
        grid = np.asarray(mask.explain(features)["mask"])
        return features * grid[..., None]

    x = images()
    first = masked(conv(x))
    # The second call of conv reads the masked first output.
    second = masked(conv(first))
    # At inference, as `explain` computes the masks.
    np.testing.assert_allclose(
        attached(x, training=False), np.concatenate([first, second], axis=-1),
        atol=1e-5,
    )
    # The mask is far from 1 after both calls: leaving it out after either
    # one would change the output by much more than the tolerance above.
    assert np.max(np.abs(conv(x) - first)) > 0.1
    assert np.max(np.abs(conv(first) - second)) > 0.1


class TwoMaps(keras.layers.Layer):
    def call(self, inputs):
        return inputs, 2.0 * inputs


def test_attach_after_a_layer_with_several_outputs_is_an_error():
    inputs = keras.Input((6, 6, 4))
    first, second = TwoMaps(name="two")(inputs)
    model = keras.Model(inputs, keras.layers.Add()([first, second]))
    with pytest.raises(ValueError,
                       match="`attach`: argument `after` must be names of "
                       "layers with a single output; received layer 'two', "
                       "which has several outputs. An EnergyMask needs a "
                       "single 4-D feature map."):
        keras_ersm.attach(model, "two")


def test_attaching_a_second_mask_after_a_layer_is_an_error():
    attached = keras_ersm.attach(shared_conv_model(), "conv")
    with pytest.raises(ValueError, match=r"`attach`: argument `after` must "
                       r"be names of layers of model '.*' that have no mask "
                       r"yet; received 'conv', which already has a mask, "
                       r"'conv_energy_mask'\. Attach each mask once\."):
        keras_ersm.attach(attached, "conv")


def nested_mask_model():
    inner_inputs = keras.Input((6, 6, 4))
    inner = keras.Model(
        inner_inputs, keras_ersm.EnergyMask(name="inner_mask")(inner_inputs),
        name="inner",
    )
    inputs = keras.Input((6, 6, 4))
    return keras.Model(inputs, inner(inputs), name="outer")


@pytest.mark.parametrize("function_name", ["mask_model", "export"])
def test_mask_grids_need_a_top_level_mask(function_name,
                                                      tmp_path):
    def call(model):
        if function_name == "export":
            keras_ersm.export(model, tmp_path / "model")
        else:
            keras_ersm.mask_model(model)

    with pytest.raises(
        ValueError,
        match=f"`{function_name}`: argument `model` must be a model whose "
              "EnergyMask layers are its own, not a nested model's; received "
              "model 'outer', with the EnergyMask 'inner_mask' inside a "
              "nested model",
    ):
        call(nested_mask_model())
    assert not (tmp_path / "model").exists()


def test_a_mask_called_twice_has_a_grid_per_call(tmp_path):
    # E.g. attached after the shared encoder of a siamese network.
    model = keras_ersm.attach(
        shared_conv_model(), "conv",
        score_kernel_initializer=keras.initializers.RandomNormal(seed=3),
        # Soft masks, which the second call changes.
        **presets.mask_kwargs("authors"),
    )
    mask = model.get_layer("conv_energy_mask")
    conv = model.get_layer("conv")
    x = images()
    first = conv(x)
    first_mask = np.asarray(mask.explain(first)["mask"])
    second = conv(first * first_mask[..., None])
    expected = {"conv_energy_mask_call0": first_mask,
                "conv_energy_mask_call1": mask.explain(second)["mask"]}
    grids = keras_ersm.mask_model(model)(x)
    assert sorted(grids) == sorted(expected)
    for name, grid in expected.items():
        np.testing.assert_allclose(grids[name], grid, atol=1e-6)
    assert np.max(np.abs(expected["conv_energy_mask_call0"]
                         - expected["conv_energy_mask_call1"])) > 1e-3

    import tensorflow as tf

    keras_ersm.export(model, tmp_path / "model")
    explain = tf.saved_model.load(str(tmp_path / "model")).signatures[
        "explain"]
    served = explain(images=tf.constant(x))
    for name, grid in expected.items():
        np.testing.assert_allclose(served[f"{name}_mask"], grid, atol=1e-6)


def test_unknown_grid_keys_are_an_error():
    # Caught when the grids are requested, not at prediction time.
    model = keras_ersm.attach(shared_conv_model(), "conv")
    with pytest.raises(ValueError, match=r"_TokenGrids '.*': argument "
                       r"`keys` must be a non-empty sequence of grid names "
                       r"from \(.*\); received \('mask', 'bogus'\)\."):
        graph.grid_outputs("test", model, ("mask", "bogus"))
