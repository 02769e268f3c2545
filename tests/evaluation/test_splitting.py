import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ersm
from keras_ersm import EnergyMask
from keras_ersm import evaluation
from keras_ersm.evaluation import splitting


def conv_model(residual):
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    masked = EnergyMask(patch_size=2, name="mask")(features)
    if residual:
        masked = keras.layers.Add()([masked, features])
    pooled = keras.layers.GlobalAveragePooling2D()(masked)
    outputs = keras.layers.Dense(3)(pooled)
    return keras.Model(inputs, outputs)


def test_split_at_mask_recomposes_the_model():
    model = conv_model(residual=False)
    split = splitting.split_at_mask(model)
    images = np.random.default_rng(0).random((2, 16, 16, 3), np.float32)
    features = split.features(images)
    assert split.mask_layer.name == "mask"
    assert features.shape == (2, 16, 16, 4)
    np.testing.assert_allclose(
        split.head(split.mask_layer(features)), model(images), atol=1e-6
    )


def test_earlier_cuts_do_not_count_as_calls_of_a_mask():
    # Every cut records the layers after it once more in Keras's graph.
    model = keras_ersm.attach(conv_model(residual=False), "conv")
    images = np.random.default_rng(1).random((2, 16, 16, 3), np.float32)
    splitting.split_at_layer(model, "conv")
    for name in ("conv_energy_mask", "mask", "conv_energy_mask"):
        split = splitting.split_at_mask(model, name)
        assert split.mask_layer.name == name
        np.testing.assert_allclose(
            split.head(split.mask_layer(split.features(images))),
            model(images), atol=1e-6,
        )
    grids = keras_ersm.mask_model(model)(images)
    assert sorted(grids) == ["conv_energy_mask", "mask"]


def test_a_mask_in_a_nested_model_is_named_not_missed():
    # Evaluated as a baseline, such a model would silently skip its mask.
    inner = conv_model(residual=False)
    inputs = keras.Input((16, 16, 3))
    outer = keras.Model(inputs, inner(inputs), name="outer")
    data = tf.data.Dataset.from_tensor_slices(
        (np.zeros((2, 16, 16, 3), np.float32), np.zeros(2, np.int32))
    ).batch(2)
    message = ("argument `model` must be a model whose EnergyMask layers "
               "are its own, not a nested model's; received model 'outer', "
               "with the EnergyMask 'mask' inside a nested model. Build the "
               "model flat")
    for evaluate in (
        lambda: splitting.split_at_mask(outer),
        lambda: splitting.find_mask_layer(outer, "mask"),
        lambda: evaluation.magnitude_maps(outer),
        lambda: evaluation.sparsity_statistics(outer, data),
        lambda: evaluation.deletion_curves(outer, data),
    ):
        with pytest.raises(ValueError, match=message):
            evaluate()


def test_a_mask_called_twice_is_rejected():
    inputs = keras.Input((8, 8, 4))
    shared = EnergyMask(name="shared")
    twice = shared(shared(inputs))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(twice))
    with pytest.raises(ValueError, match="`split_at_mask`: argument `model` "
                       "must be a model that calls layer 'shared' once; "
                       "received model .*, which calls it 2 times"):
        splitting.split_at_mask(model)


def test_split_at_mask_with_residual_raises():
    with pytest.raises(ValueError, match="`split_at_mask`: argument "
                       "`tensor` must be a tensor .* that every path from its "
                       "input to its output passes through"):
        splitting.split_at_mask(conv_model(residual=True))


def test_find_mask_layer_errors():
    model = conv_model(residual=False)
    assert splitting.find_mask_layer(model, "mask").name == "mask"
    with pytest.raises(ValueError, match="`find_mask_layer`: argument "
                       "`name` must be None or the name of an EnergyMask "
                       "layer .*; received 'conv', a Conv2D"):
        splitting.find_mask_layer(model, "conv")
    with pytest.raises(ValueError, match="`find_mask_layer`: argument "
                       "`name` must be None or the name of a layer of model "
                       ".*; received 'nope'"):
        splitting.find_mask_layer(model, "nope")
    inputs = keras.Input((4, 4, 1))
    plain = keras.Model(inputs, keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="`find_mask_layer`: argument "
                       "`model` must be a model with an EnergyMask layer; "
                       "received model .*, which has none"):
        splitting.find_mask_layer(plain)


def test_split_at_layer_defaults_to_last_feature_map():
    model = conv_model(residual=False)
    assert splitting.last_feature_map_layer(model).name == "mask"
    features, head = splitting.split_at_layer(model, "conv")
    images = np.ones((1, 16, 16, 3), np.float32)
    np.testing.assert_allclose(head(features(images)), model(images),
                               atol=1e-6)
    with pytest.raises(ValueError, match="`split_at_layer`: argument "
                       "`layer` must be None or a layer that outputs a 4-D "
                       "feature map"):
        splitting.split_at_layer(model, model.layers[-1].name)


def test_split_a_sequential_model_and_reject_a_layer():
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, padding="same"),
        EnergyMask(name="mask"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(2),
    ])
    split = splitting.split_at_mask(model)
    images = np.ones((1, 8, 8, 3), np.float32)
    np.testing.assert_allclose(
        split.head(split.mask_layer(split.features(images))), model(images),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="`split_at_mask`: argument `model` "
                       "must be a functional keras.Model .*; received "
                       "<Dense"):
        splitting.split_at_mask(keras.layers.Dense(2))
    unbuilt = keras.Sequential([keras.layers.Conv2D(4, 3)])
    with pytest.raises(ValueError, match="`split_at_mask`: argument `model` "
                       "must be a functional or built Sequential keras.Model; "
                       "received <Sequential .*Build it on a keras.Input"):
        splitting.split_at_mask(unbuilt)


def test_a_model_with_two_outputs_is_rejected():
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    model = keras.Model(inputs, [features, features])
    with pytest.raises(ValueError, match="`split_at_layer`: argument `model` "
                       "must be a model with one input and one output; "
                       "received model .* with 1 inputs and 2 outputs"):
        splitting.split_at_layer(model, "conv")
