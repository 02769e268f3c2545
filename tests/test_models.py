"""build_classifier, attach, mask_model and the backbones."""

import numpy as np
import pytest

import keras

import keras_ersm
from keras_ersm import backbones
from keras_ersm import graph
from keras_ersm import initializers
from keras_ersm import presets
from keras_ersm import preprocessing

# sigmoid(1e4) == 1 exactly in float32: the mask is all ones.
ALL_ONES_BIAS = -1e4


def small_backbone():
    """A 16x16 conv net whose `conv1` output feeds two layers (a skip)."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                            name="conv1")(inputs)
    main = keras.layers.Conv2D(8, 3, strides=2, padding="same",
                               activation="relu", name="conv2")(x)
    skip = keras.layers.AveragePooling2D(2, name="skip_pool")(x)
    x = keras.layers.Add(name="block_out")([main, skip])
    x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inputs, x, name="small")


def set_mask(model, bias):
    for layer in graph.energy_masks(model):
        layer.score_kernel.assign(np.zeros(layer.score_kernel.shape))
        layer.score_bias.assign(np.full(layer.score_bias.shape, bias))


def images(shape, batch=2, seed=0):
    return np.random.default_rng(seed).uniform(
        0, 1, (batch,) + tuple(shape)).astype("float32")


def test_attach_rewires_every_consumer_and_reuses_layers():
    base = small_backbone()
    x = images((16, 16, 3))
    # Soft masks, no scaling: a bias of 0 keeps half of every token.
    attached = keras_ersm.attach(
        base, ["conv1", "block_out"],
        **presets.mask_kwargs("authors", patch_size=2))

    mask_names = [layer.name for layer in graph.energy_masks(attached)]
    assert mask_names == ["conv1_energy_mask", "block_out_energy_mask"]
    original = {layer.name: layer for layer in base.layers}
    for layer in attached.layers:
        if layer.name in original and not isinstance(
            layer, keras.layers.InputLayer
        ):
            assert layer is original[layer.name]
    # Both consumers of conv1 (conv2 and skip_pool) read the masked map.
    consumers = {
        node.operation.name
        for node in attached.get_layer("conv1_energy_mask")._outbound_nodes
    }
    assert {"conv2", "skip_pool"} <= consumers

    set_mask(attached, ALL_ONES_BIAS)
    np.testing.assert_array_equal(attached(x), base(x))
    # Half-kept tokens after conv1 and block_out: conv1 is ReLU and conv2
    # is linear up to its ReLU, so the output is the original times 1/2 at
    # conv1 (through both branches) and 1/2 at block_out, before BN.
    set_mask(attached, 0.0)
    pre_bn = keras.Model(base.input, base.get_layer("block_out").output)
    pre_bn_masked = keras.Model(
        attached.input, attached.get_layer("block_out_energy_mask").output
    )
    np.testing.assert_allclose(
        pre_bn_masked(x), 0.25 * pre_bn(x), rtol=1e-5, atol=1e-6
    )


def test_attach_resnet50_mid_backbone():
    resnet = keras.applications.ResNet50(
        weights=None, include_top=False, input_shape=(64, 64, 3)
    )
    attached = keras_ersm.attach(resnet, "conv4_block6_out", patch_size=1,
                                output_scaling="none")
    mask = attached.get_layer("conv4_block6_out_energy_mask")
    assert mask.input.shape == (None, 4, 4, 1024)
    assert len(attached.weights) == len(resnet.weights) + 2
    x = images((64, 64, 3))
    set_mask(attached, ALL_ONES_BIAS)
    np.testing.assert_array_equal(attached(x), resnet(x))
    grids = keras_ersm.mask_model(attached)(x)
    np.testing.assert_array_equal(
        grids["conv4_block6_out_energy_mask"], np.ones((2, 4, 4))
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    "ResNet50", "ResNet50V2", "MobileNetV2", "MobileNetV3Small",
    "EfficientNetV2B0", "ConvNeXtTiny", "DenseNet121",
])
def test_backbones(name):
    # Eager calls: tracing predict() of each backbone costs more than it.
    backbone = backbones.create(name, (32, 32, 3), weights=None)
    x = 255 * images((32, 32, 3))
    features = backbone(x)

    attached = keras_ersm.attach(backbone, backbone.layers[-1].name,
                                 output_scaling="none")
    set_mask(attached, ALL_ONES_BIAS)
    np.testing.assert_array_equal(attached(x), features)

    model = keras_ersm.build_classifier(backbone, 5, patch_size=1)
    assert not backbone.trainable
    assert sorted(w.path for w in model.trainable_weights) == [
        "energy_mask/score_bias", "energy_mask/score_kernel",
        "predictions/bias", "predictions/kernel",
    ]
    probabilities = model(x)
    assert probabilities.shape == (2, 5)
    np.testing.assert_allclose(np.sum(probabilities, axis=1), 1, rtol=1e-5)
    masks = keras_ersm.mask_model(model)(x)
    assert masks["energy_mask"].shape == (2,) + tuple(features.shape[1:3])


def test_attach_errors():
    base = small_backbone()
    with pytest.raises(ValueError, match=r"`attach`: argument `after` must "
                       r"be names of layers of model '.*'; received "
                       r"'conv_1', which names no layer\. Close matches: "
                       r"\['conv1'"):
        keras_ersm.attach(base, "conv_1")
    with pytest.raises(ValueError, match="`attach`: argument `after` must be "
                       "names of layers that compute a feature map; "
                       "received the input layer 'image'."):
        keras_ersm.attach(base, "image")
    with pytest.raises(ValueError, match=r"`attach`: argument `after` must "
                       r"be distinct layer names; received \['conv1', "
                       r"'conv1'\]\. It names a layer twice"):
        keras_ersm.attach(base, ["conv1", "conv1"])
    with pytest.raises(ValueError, match=r"`attach`: argument `after` must "
                       r"be a layer name or a non-empty list of layer names; "
                       r"received \[\]\."):
        keras_ersm.attach(base, [])
    with pytest.raises(ValueError, match="`attach`: argument `name` must be "
                       "left out: the mask after layer L is named "
                       "'L_energy_mask'; received 'mask'."):
        keras_ersm.attach(base, "conv1", name="mask")
    with pytest.raises(ValueError, match="patch_size"):
        keras_ersm.attach(base, "block_out", patch_size=3)

    sequential = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="conv")]
    )
    with pytest.raises(ValueError, match=r"`attach`: argument `model` must "
                       r"be "
                       r"a functional keras\.Model .*; received "
                       r"<Sequential .*Convert it first"):
        keras_ersm.attach(sequential, "conv")
    # The suggested conversion works.
    converted = keras.Model(sequential.inputs, sequential.outputs)
    assert keras_ersm.attach(converted, "conv").get_layer("conv_energy_mask")

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3)

        def call(self, x):
            return self.conv(x)

    with pytest.raises(ValueError, match="`attach`: argument `model` must be "
                       "a functional keras.Model .*; received <Subclassed "
                       ".*subclassed.*EnergyMask"):
        keras_ersm.attach(Subclassed(), "conv")


def test_mask_model_returns_the_applied_masks():
    base = small_backbone()
    attached = keras_ersm.attach(
        base, ["conv1", "block_out"],
        score_kernel_initializer="random_normal",
        **presets.mask_kwargs("authors", patch_size=2),
    )
    x = images((16, 16, 3), batch=3)
    masks = keras_ersm.mask_model(attached).predict(x, verbose=0)
    assert sorted(masks) == ["block_out_energy_mask", "conv1_energy_mask"]
    for name, grid_shape in [("conv1_energy_mask", (3, 8, 8)),
                             ("block_out_energy_mask", (3, 4, 4))]:
        layer = attached.get_layer(name)
        features = keras.Model(attached.input, layer.input)(x)
        expected = layer.explain(features)
        assert masks[name].shape == grid_shape
        np.testing.assert_allclose(masks[name], expected["mask"], atol=1e-6)
        # "reference": the applied mask is keep.
        np.testing.assert_allclose(masks[name], expected["keep"], atol=1e-6)
        assert 0.0 < masks[name].std()

    with pytest.raises(ValueError, match="`mask_model`: argument `model` "
                       "must be a model with an EnergyMask layer; received "
                       "model '.*', which has no EnergyMask layer. Add one "
                       "with keras_ersm.attach"):
        keras_ersm.mask_model(base)


def test_mask_model_returns_the_coherent_mask_not_keep():
    # "coherent": the applied mask is the mean-field solution; with
    # coupling 2 over 8 neighbours it moves well away from keep.
    attached = keras_ersm.attach(
        small_backbone(), ["conv1", "block_out"],
        score_kernel_initializer="random_normal",
        **presets.mask_kwargs("authors", patch_size=2,
                              formulation="coherent", coupling=2.0,
                              mean_field_steps=3),
    )
    x = images((16, 16, 3), batch=3)
    masks = keras_ersm.mask_model(attached).predict(x, verbose=0)
    for name in ("conv1_energy_mask", "block_out_energy_mask"):
        layer = attached.get_layer(name)
        features = keras.Model(attached.input, layer.input)(x)
        expected = layer.explain(features)
        np.testing.assert_allclose(masks[name], expected["mask"], atol=1e-6)
        assert np.max(np.abs(masks[name] - expected["keep"])) > 1e-2


def test_build_classifier_structure_and_errors():
    backbone = small_backbone()
    model = keras_ersm.build_classifier(
        backbone, 4, freeze_backbone=False, dropout=0.25,
        **presets.mask_kwargs("authors"),
    )
    assert [layer.name for layer in model.layers[-4:]] == [
        "energy_mask", "avg_pool_ersm", "head_dropout", "predictions"
    ]
    assert backbone.trainable
    assert model.get_layer("conv1") is backbone.get_layer("conv1")
    mask = model.get_layer("energy_mask")
    assert (mask.options.formulation, mask.options.unary_weight,
            mask.options.pairwise_weight,
            mask.options.temperature, mask.options.energy_loss_weight) == (
        "reference", 1e-3, 1e-3, 1.0, 1.0)
    assert model.get_layer("head_dropout").rate == 0.25

    with pytest.raises(ValueError, match="`build_classifier`: argument "
                       "`num_classes` must be an integer >= 2; received 1."):
        keras_ersm.build_classifier(backbone, 1)
    with pytest.raises(ValueError, match=r"`build_classifier`: argument "
                       r"`dropout` must be a number in \[0, 1\); received "
                       r"1\.0\."):
        keras_ersm.build_classifier(backbone, 3, dropout=1.0)
    pooled = keras.Model(
        backbone.input,
        keras.layers.GlobalAveragePooling2D()(backbone.output),
    )
    with pytest.raises(ValueError, match=r"`build_classifier`: argument "
                       r"`backbone` must be a keras\.Model with a single 4-D "
                       r"\(batch, height, width, channels\) output; received "
                       r"model '.*', with outputs <KerasTensor .*\. For "
                       r"Keras Applications pass include_top=False"):
        keras_ersm.build_classifier(pooled, 3)
    with pytest.raises(ValueError, match="`build_classifier`: argument "
                       "`backbone` must be a keras.Model with a 4-D "
                       "feature-map output; received 'resnet'."):
        keras_ersm.build_classifier("resnet", 3)
    with pytest.raises(ValueError, match=r"`build_classifier`: argument "
                       r"`with_mask` must be True when arguments of "
                       r"EnergyMask are given; received False, with "
                       r"\['patch_size'\]\. Pass with_mask=True"):
        keras_ersm.build_classifier(backbone, 3, with_mask=False,
                                    patch_size=1)


def test_keras_save_load_round_trip(tmp_path):
    attached = keras_ersm.attach(
        small_backbone(), ["conv1", "block_out"], patch_size=2,
        formulation="coherent", score_kernel_initializer="random_normal",
    )
    x = images((16, 16, 3))
    path = tmp_path / "attached.keras"
    attached.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(x), attached(x))
    layer = loaded.get_layer("conv1_energy_mask")
    assert isinstance(layer, keras_ersm.EnergyMask)
    assert (layer.options.patch_size, layer.options.formulation) == (
        2, "coherent")


def test_backbone_registry_errors():
    with pytest.raises(
        ValueError, match=r"`create`: argument `name` must be one of "
                          r"\[.*\] \(any case\); received 'resnet-50'\. "
                          r"Did you mean \['ResNet50'"
    ):
        backbones.create("resnet-50", weights=None)
    # Every backbone has its input preprocessing registered.
    for name in backbones.BACKBONES:
        assert name in preprocessing.SUPPORTED_BACKBONES


def test_feature_layers_are_found_by_the_names_of_a_fresh_process():
    # Keras numbers auto-generated names ("re_lu_3") per process.
    first = backbones.create("MobileNetV3Small", (32, 32, 3), weights=None)
    keras.layers.ReLU(), keras.layers.Activation("relu")
    second = backbones.create("MobileNetV3Small", (32, 32, 3), weights=None)
    assert [layer.name for layer in second.layers] != [
        layer.name for layer in first.layers]
    names = backbones.canonical_layer_names(second)
    assert names == backbones.canonical_layer_names(first)
    assert {"re_lu", "activation", "rescaling"} <= set(names)
    for name in ("activation_1", "re_lu_2", "expanded_conv_2_add"):
        found = backbones.get_layer(second, name)
        assert found is second.layers[names.index(name)]
        same = backbones.get_layer(first, name)
        assert first.layers.index(same) == second.layers.index(found)
        assert type(found) is type(same)
        assert found.output.shape == same.output.shape
    # Its own name still finds a layer.
    renamed = second.layers[names.index("activation_1")]
    assert backbones.get_layer(second, renamed.name) is renamed
    with pytest.raises(ValueError, match="`get_layer`: argument `name` must "
                       "be the name of a layer of model '.*'; received "
                       "'activation_99', which names no layer."):
        backbones.get_layer(second, "activation_99")
    # Names stay unique for layers made before and after a build.
    before = keras.layers.Activation("softmax")
    third = backbones.create("MobileNetV3Small", (32, 32, 3), weights=None)
    pooled = keras.layers.GlobalAveragePooling2D()(third.output)
    keras.Model(third.input, before(keras.layers.Activation("relu")(pooled)))


def test_initial_keep_bias_and_benchmark_convnet_errors():
    with pytest.raises(ValueError) as info:
        initializers.initial_keep_bias(1.5)
    assert str(info.value) == (
        "`initial_keep_bias`: argument `initial_keep` must be a number in "
        "(0, 1); received 1.5."
    )
    with pytest.raises(ValueError) as info:
        initializers.initial_keep_bias(0.9, temperature=0.0)
    assert str(info.value) == (
        "`initial_keep_bias`: argument `temperature` must be a number > 0; "
        "received 0.0."
    )
    with pytest.raises(ValueError) as info:
        backbones.benchmark_convnet(include_top=True)
    assert str(info.value) == (
        "`benchmark_convnet`: argument `include_top` must be False (it is a "
        "feature extractor); received True."
    )
    with pytest.raises(ValueError) as info:
        backbones.benchmark_convnet(weights="imagenet")
    assert str(info.value) == (
        "`benchmark_convnet`: argument `weights` must be None or a weights "
        "file (it has no ImageNet weights); received 'imagenet'. Pre-train "
        "it on the benchmark with "
        "keras_ersm.pretraining.pretrained_benchmark_backbone."
    )


def test_a_pooled_backbone_is_refused():
    with pytest.raises(ValueError, match="`create`: argument `pooling` must "
                       "be "
                       "None .*; received 'avg'"):
        backbones.create("MobileNetV2", (32, 32, 3), weights=None,
                         pooling="avg")


def test_imagenet_weights_offline_fail_clearly(monkeypatch):
    import urllib.error

    from keras.src.utils import file_utils

    def offline_get_file(fname=None, origin=None, **kwargs):
        # What keras.utils.get_file raises when the network is down.
        try:
            raise urllib.error.URLError("[Errno -2] Name or service not known")
        except urllib.error.URLError as error:
            raise Exception(
                f"URL fetch failure on {origin}: None -- {error.reason}"
            )

    monkeypatch.setattr(file_utils, "get_file", offline_get_file)
    with pytest.raises(backbones.WeightsDownloadError) as info:
        backbones.create("MobileNetV3Small", (32, 32, 3))
    message = str(info.value)
    assert "no network access" in message
    assert "weights=None" in message
    assert ("https://storage.googleapis.com/tensorflow/keras-applications/"
            "mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2"
            ".h5") in message
    assert isinstance(info.value, OSError)
    # Other errors pass through unchanged.
    with pytest.raises(ValueError, match="input"):
        backbones.create("ResNet50", (8, 8, 3), weights=None)
