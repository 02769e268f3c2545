"""Building models with `EnergyMask` layers.

* `build_classifier`: the authors' protocol, backbone -> EnergyMask ->
  global average pooling -> Dense head.
* `attach`: insert masks after named layers of any functional model.
* `mask_model`: a model from the same inputs to every mask layer's grid.
"""

import difflib

import keras

from keras_ersm import compat
from keras_ersm import validation
from keras_ersm.graph import check_functional
from keras_ersm.graph import energy_masks
from keras_ersm.graph import grid_outputs
from keras_ersm.layers import EnergyMask


def build_classifier(
    backbone, num_classes, *, freeze_backbone=True, dropout=0.0,
    with_mask=True, **mask_kwargs
):
    """Backbone -> EnergyMask -> global average pooling -> Dense head.

    The authors' protocol: the mask sits between the backbone's last feature
    map and the linear head. The backbone's layers become layers of the
    returned model (not one nested layer), so `attach` and `mask_model` see
    them by name. With `with_mask=False` the same classifier without the
    mask: the baseline the masked one is compared with.

    Args:
        backbone: a functional `keras.Model` with a single 4-D channels-last
            output, e.g. a Keras Applications model built with
            `include_top=False` (see `keras_ersm.backbones.create`).
        num_classes: int >= 2, size of the softmax head.
        freeze_backbone: bool. True (the authors' protocol) sets
            `backbone.trainable = False`, which also runs its batch
            normalisation layers in inference mode, except for `EnergyMask`
            layers already in the backbone (see `attach`), which stay
            trainable. This changes `backbone` itself.
        dropout: float in [0, 1), dropout rate before the head.
        with_mask: bool, False for no mask (and no `mask_kwargs`).
        **mask_kwargs: arguments of `keras_ersm.EnergyMask`; the layer is
            named `"energy_mask"` unless `name` is given.

    Returns:
        A functional `keras.Model` from the backbone's inputs to float32
        class probabilities (batch, num_classes); the head is named
        `"predictions"`, the pooling `"avg_pool_ersm"` after a mask and
        `"avg_pool"` without. Its name is the backbone's, followed by
        `"_ersm"` or `"_baseline"`.

    Example:

    >>> backbone = keras_ersm.backbones.create("ResNet50", (64, 64, 3),
    ...                                        weights=None)
    >>> model = keras_ersm.build_classifier(backbone, 200, patch_size=1)
    >>> model.compile(**keras_ersm.recipes.authors_recipe(total_steps=10_000))
    >>> model.output.shape
    (None, 200)
    """
    caller = "`build_classifier`"
    if not isinstance(backbone, keras.Model):
        raise validation.invalid(
            caller, "backbone", "a keras.Model with a 4-D feature-map output",
            backbone,
        )
    try:
        features = backbone.output
    except (AttributeError, ValueError) as error:
        raise validation.invalid(
            caller, "backbone", "a functional keras.Model with defined "
            "inputs and outputs",
            received=f"model '{backbone.name}', which has none ({error})",
            hint="Build it on a keras.Input.",
        ) from error
    if not isinstance(features, keras.KerasTensor) or len(features.shape) != 4:
        raise validation.invalid(
            caller, "backbone", "a keras.Model with a single 4-D (batch, "
            "height, width, channels) output",
            received=f"model '{backbone.name}', with outputs {features!r}",
            hint="For Keras Applications pass include_top=False and "
            "pooling=None.",
        )
    validation.check_integer(caller, "num_classes", num_classes, 2)
    validation.check_number(caller, "dropout", dropout,
                            "a number in [0, 1)", lambda v: 0 <= v < 1)
    validation.check_bool(caller, "freeze_backbone", freeze_backbone)
    validation.check_bool(caller, "with_mask", with_mask)
    if not with_mask and mask_kwargs:
        raise validation.invalid(
            caller, "with_mask", "True when arguments of EnergyMask are given",
            received=f"False, with {sorted(mask_kwargs)}",
            hint="Pass with_mask=True, or leave out the EnergyMask "
            "arguments.",
        )
    if freeze_backbone:
        backbone.trainable = False
        # Masks already attached inside the backbone are ERSM's, not
        # pretrained: they keep training.
        for layer in energy_masks(backbone):
            layer.trainable = True
    x = features
    if with_mask:
        mask_kwargs.setdefault("name", "energy_mask")
        x = EnergyMask(**mask_kwargs)(x)
    pool = "avg_pool_ersm" if with_mask else "avg_pool"
    x = keras.layers.GlobalAveragePooling2D(name=pool)(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 head: softmax and the loss stay accurate under mixed precision.
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="predictions"
    )(x)
    suffix = "ersm" if with_mask else "baseline"
    return keras.Model(backbone.input, outputs,
                       name=f"{backbone.name}_{suffix}")


def attach(model, after, **mask_kwargs):
    """Insert an `EnergyMask` right after each named layer of a model.

    Every consumer of a named layer's output reads the masked output instead
    (skip connections included). The model's layers, and so its weights, are
    reused, not copied: the new model shares them with `model`. The mask
    inserted after layer `name` is named `f"{name}_energy_mask"`; a layer
    called several times (shared) gets one mask, applied after every call.

    Args:
        model: a functional `keras.Model`, e.g. a Keras Applications model.
        after: a layer name or a list of layer names of `model`, e.g.
            `"conv4_block6_out"` of ResNet50; each must output a 4-D
            channels-last feature map.
        **mask_kwargs: arguments of `keras_ersm.EnergyMask` (except `name`),
            used for every inserted mask.

    Returns:
        A new functional `keras.Model` with the same inputs and outputs
        (structure and names) as `model`. An output that a named layer
        computes is masked; it keeps its name in `output_names` (what
        `compile` keys dict losses by), but a `.keras` file reloads it
        under the mask's name.

    Example:

    >>> resnet = keras.applications.ResNet50(weights=None, include_top=False)
    >>> masked = keras_ersm.attach(resnet, "conv4_block6_out", patch_size=1)
    >>> masked.get_layer("conv4_block6_out_energy_mask")
    <EnergyMask name=conv4_block6_out_energy_mask, built=True>
    """
    caller = "`attach`"
    check_functional(caller, model)
    names = _layer_names(caller, after)
    if "name" in mask_kwargs:
        raise validation.invalid(
            caller, "name", "left out: the mask after layer L is named "
            "'L_energy_mask'", mask_kwargs["name"],
        )
    _check_maskable(caller, model, names)
    masks = {
        name: EnergyMask(name=f"{name}_energy_mask", **mask_kwargs)
        for name in names
    }
    masked = keras.models.clone_model(
        model, input_tensors=_inputs_named_as(model),
        clone_function=lambda layer: layer,
        call_function=_masking_call(caller, masks),
    )
    # An output computed by a named layer now comes from its mask: keep the
    # output's name, which losses and metrics given as dicts are keyed by
    # (a `.keras` file rebuilds it from the layers: the mask's name).
    masked.output_names = list(model.output_names)
    if model.compiled:
        # clone_model compiled it before: dict losses keyed by the old names.
        masked.compile_from_config(model.get_compile_config())
    return masked


def _layer_names(caller, after):
    """`attach`'s `after` as a list of distinct layer names."""
    names = [after] if isinstance(after, str) else after
    if (
        not isinstance(names, (list, tuple))
        or not names
        or not all(isinstance(name, str) for name in names)
    ):
        raise validation.invalid(
            caller, "after", "a layer name or a non-empty list of layer names",
            after,
        )
    if len(set(names)) != len(names):
        raise validation.invalid(
            caller, "after", "distinct layer names", after,
            hint="It names a layer twice: attach each mask once.",
        )
    return list(names)


def _check_maskable(caller, model, names):
    """Raise unless each of `names` is a layer of `model` that computes a
    feature map and has no mask yet."""
    layers = {layer.name: layer for layer in model.layers}
    for name in names:
        if name not in layers:
            close = difflib.get_close_matches(name, list(layers), n=5)
            raise validation.invalid(
                caller, "after", f"names of layers of model '{model.name}'",
                received=f"{name!r}, which names no layer",
                hint=(f"Close matches: {close}." if close
                      else "See [layer.name for layer in model.layers]."),
            )
        if f"{name}_energy_mask" in layers:
            raise validation.invalid(
                caller, "after", f"names of layers of model '{model.name}' "
                "that have no mask yet",
                received=f"{name!r}, which already has a mask, "
                f"'{name}_energy_mask'",
                hint="Attach each mask once.",
            )
        if isinstance(layers[name], keras.layers.InputLayer):
            raise validation.invalid(
                caller, "after", "names of layers that compute a feature map",
                received=f"the input layer {name!r}",
            )


def _inputs_named_as(model):
    """New inputs like `model`'s, named as its input layers (clone_model
    would name them after their tensors, "keras_tensor_7": the exported
    signature's input names)."""
    return keras.tree.map_structure(
        lambda tensor: keras.Input(
            batch_shape=tensor.shape, dtype=tensor.dtype,
            sparse=tensor.sparse, name=compat.producing_layer(tensor).name,
        ),
        model.input,
    )


def _masking_call(caller, masks):
    """The `call_function` of `clone_model` that calls each layer, then the
    mask in `masks` ({layer name: EnergyMask}) after it, if any."""

    def call_function(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        if layer.name not in masks:
            return outputs
        if not isinstance(outputs, keras.KerasTensor):
            raise validation.invalid(
                caller, "after", "names of layers with a single output",
                received=f"layer {layer.name!r}, which has several outputs",
                hint="An EnergyMask needs a single 4-D feature map.",
            )
        return masks[layer.name](outputs)

    return call_function


def mask_model(model):
    """A model from `model`'s inputs to the mask of every EnergyMask.

    The grid of each layer is the mask it applies: `keep = sigmoid(-z / T)`
    for the "reference" formulation, the mean-field solution for "coherent".
    Use it to look at masks without running the head; its layers are those
    of `model`, so it follows `model`'s training. It is meant for
    inference, not for saving.

    Args:
        model: a functional `keras.Model` with `EnergyMask` layers at its top
            level (as `build_classifier` and `attach` make).

    Returns:
        A `keras.Model` with the inputs of `model` and a dict output
        {EnergyMask layer name: float32 (batch, height / p, width / p)};
        a mask called several times (attached after a shared layer) has one
        entry per call, `f"{name}_call{i}"`.

    Example:

    `model` made by `build_classifier` on a backbone with a 4x4 map:

    >>> masks = keras_ersm.mask_model(model).predict(images, verbose=0)
    >>> masks["energy_mask"].shape  # 8 images
    (8, 4, 4)
    """
    grids = grid_outputs("`mask_model`", model, ("mask",))
    outputs = {name: grid["mask"] for name, grid in grids.items()}
    return keras.Model(model.input, outputs, name=f"{model.name}_masks")

