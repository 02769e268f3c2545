"""Putting `EnergyMask` layers into models.

* `build_classifier`: the authors' protocol, backbone -> EnergyMask ->
  global average pooling -> Dense head.
* `attach`: insert masks after named layers of any functional model.
* `mask_model`: a model from the same inputs to every mask layer's grid.
* `authors_recipe`: the authors' optimiser and schedule (see ERSM.md;
  their mask is `keras_ersm.presets`' "authors").
"""

import difflib
import math

import keras

from keras_ersm import compat
from keras_ersm import validation
from keras_ersm.energy import GRID_KEYS
from keras_ersm.layers import EnergyMask


def check_functional(caller, model, sequential=False):
    """Raise unless `model` is a functional `keras.Model`: a graph of layer
    calls, which `attach` rewires and the evaluation cuts.

    Args:
        caller: what takes `model`, named in the message: a function in
            backticks ("`attach`") or a class ("MaskTensorBoard").
        model: the argument to check.
        sequential: whether a built Sequential model will do; it holds a
            graph too, but one that `attach` cannot rewire.
    """
    if sequential and isinstance(model, keras.Sequential):
        try:
            model.inputs
        except (AttributeError, ValueError):
            raise validation.invalid(
                caller, "model", "a functional or built Sequential "
                "keras.Model", model, hint="Build it on a keras.Input.",
            ) from None
        return
    expected = ("a functional keras.Model (built with keras.Input and layer "
                "calls)")
    if isinstance(model, keras.Sequential):
        raise validation.invalid(
            caller, "model", expected, model,
            hint="Convert it first: keras.Model(model.inputs, "
            "model.outputs) (build it on a keras.Input so that it has "
            "inputs).",
        )
    if not compat.is_functional(model):
        hint = None
        if isinstance(model, keras.Model):
            hint = ("A subclassed model has no graph of layer calls: rewrite "
                    "it with the functional API, or create a "
                    "keras_ersm.EnergyMask in its __init__ and call it in "
                    "call().")
        raise validation.invalid(caller, "model", expected, model, hint=hint)


def nested_mask_error(caller, model, layer):
    """The `ValueError` for an EnergyMask `layer` inside a nested model of
    `model`: its grid and its cut are not in `model`'s own graph."""
    return validation.invalid(
        caller, "model", "a model whose EnergyMask layers are its own, not "
        "a nested model's",
        received=f"model '{model.name}', with the EnergyMask "
        f"'{layer.name}' inside a nested model",
        hint="Build the model flat (as build_classifier and attach do).",
    )


def energy_masks(model):
    """The `EnergyMask` layers of `model`, nested models included.

    Args:
        model: a `keras.Model`.

    Returns:
        A list of `EnergyMask` layers, in the order of `model.layers`.
    """
    found = []
    for layer in model.layers:
        if isinstance(layer, EnergyMask):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(energy_masks(layer))
    return found


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
    >>> model.compile(**keras_ersm.models.authors_recipe(total_steps=10_000))
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
    if "name" in mask_kwargs:
        raise validation.invalid(
            caller, "name", "left out: the mask after layer L is named "
            "'L_energy_mask'", mask_kwargs["name"],
        )
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
    masks = {
        name: EnergyMask(name=f"{name}_energy_mask", **mask_kwargs)
        for name in names
    }

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

    # New inputs named as the model's input layers (clone_model would name
    # them after their tensors, "keras_tensor_7": the exported signature's
    # input names).
    inputs = keras.tree.map_structure(
        lambda tensor: keras.Input(
            batch_shape=tensor.shape, dtype=tensor.dtype,
            sparse=tensor.sparse, name=compat.producing_layer(tensor).name,
        ),
        model.input,
    )
    masked = keras.models.clone_model(
        model, input_tensors=inputs, clone_function=lambda layer: layer,
        call_function=call_function,
    )
    # An output computed by a named layer now comes from its mask: keep the
    # output's name, which losses and metrics given as dicts are keyed by
    # (a `.keras` file rebuilds it from the layers: the mask's name).
    masked.output_names = list(model.output_names)
    if model.compiled:
        # clone_model compiled it before: dict losses keyed by the old names.
        masked.compile_from_config(model.get_compile_config())
    return masked


class _TokenGrids(keras.layers.Layer):
    """The token grids of an `EnergyMask` layer as a layer of a model.

    Calls `mask_layer.explain` on its input (the mask layer's own input) and
    returns the selected grids. The grids do not depend on the mask layer's
    metric or loss, and calling this layer updates neither. Private: it holds
    the mask layer itself, so the models built with it (`mask_model`,
    `export`'s explain graph) are not meant to be saved as `.keras` files.

    Args:
        mask_layer: a built `EnergyMask`.
        keys: names of the grids to return, from "score", "keep", "energy"
            and "mask".
        **kwargs: base `Layer` arguments.

    Returns:
        A dict {key: float32 tensor (batch, height / p, width / p)}.
    """

    def __init__(self, mask_layer, keys=("mask",), **kwargs):
        super().__init__(**kwargs)
        unknown = sorted(set(keys) - set(GRID_KEYS))
        if unknown or not keys:
            raise validation.invalid(
                f"_TokenGrids '{self.name}'", "keys",
                f"a non-empty sequence of grid names from {GRID_KEYS}", keys,
            )
        self.mask_layer = mask_layer
        self.keys = tuple(keys)
        # An autocast scope would read the mask layer's float32 weights in
        # the compute dtype (bfloat16 under mixed precision).
        self.autocast = False

    def call(self, inputs):
        grids = self.mask_layer.explain(inputs)
        return {key: grids[key] for key in self.keys}

    def compute_output_spec(self, inputs):
        batch, height, width, _ = inputs.shape
        p = self.mask_layer.options.patch_size
        shape = (
            batch,
            None if height is None else height // p,
            None if width is None else width // p,
        )
        return {key: keras.KerasTensor(shape, "float32") for key in self.keys}


def _mask_inputs(caller, model, layer):
    """{grid name: the tensor `layer` (an EnergyMask of `model`) is called
    on}: the layer's name, or `f"{name}_call{i}"` for each call of a layer
    called several times (e.g. attached after a shared layer)."""
    if layer not in model.layers:
        raise nested_mask_error(caller, model, layer)
    calls = compat.calls_in(model, layer)
    if len(calls) == 1:
        return {layer.name: calls[0].input_tensors[0]}
    return {
        f"{layer.name}_call{index}": call.input_tensors[0]
        for index, call in enumerate(calls)
    }


def grid_outputs(caller, model, keys):
    """Symbolic token grids of every EnergyMask of a functional model.

    Args:
        caller: named in errors: the public function
            calling this, in backticks ("`mask_model`"), or a class
            ("MaskTensorBoard").
        model: a functional `keras.Model` with top-level EnergyMask layers.
        keys: grid names to read, from "score", "keep", "energy", "mask".

    Returns:
        {grid name: {key: KerasTensor (batch, height / p, width / p)}},
        tensors of `model`'s graph, computed from `model.input`; the grid
        name is the mask layer's, or `f"{name}_call{i}"` for the i-th call
        of a mask called several times.
    """
    check_functional(caller, model)
    masks = energy_masks(model)
    if not masks:
        raise validation.invalid(
            caller, "model", "a model with an EnergyMask layer",
            received=f"model '{model.name}', which has no EnergyMask layer",
            hint="Add one with keras_ersm.attach or "
            "keras_ersm.build_classifier.",
        )
    inputs = {}
    for layer in masks:
        for name, tensor in _mask_inputs(caller, model, layer).items():
            if name in inputs:
                raise validation.invalid(
                    caller, "model", "a model whose EnergyMask grids "
                    "have distinct names",
                    received=f"model '{model.name}', with two grids named "
                    f"{name!r}",
                    hint="Rename the EnergyMask layers.",
                )
            inputs[name] = (layer, tensor)
    return {
        name: _TokenGrids(layer, keys, name=f"{name}_grids")(tensor)
        for name, (layer, tensor) in inputs.items()
    }


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


def authors_recipe(total_steps, *, learning_rate=1e-3, weight_decay=1e-4,
                   steps_per_epoch=None):
    """The authors' optimiser, schedule and loss as `compile` arguments.

    AdamW (lr 1e-3, weight decay 1e-4) with a cosine decay of the learning
    rate to 0 over `total_steps`, sparse categorical cross-entropy on the
    softmax outputs of `build_classifier`, and accuracy. The energy loss is
    added by the mask layers themselves; pass
    `**keras_ersm.presets.mask_kwargs("authors")` to `build_classifier` for
    the authors' energy. The authors train 20 epochs with batch size 32,
    stepping the cosine schedule once per epoch (PyTorch's
    `CosineAnnealingLR` with `T_max` = epochs): pass `steps_per_epoch`.

    Args:
        total_steps: int >= 1, number of optimiser steps of the whole run.
        learning_rate: float > 0, initial learning rate.
        weight_decay: float >= 0, AdamW's decoupled weight decay.
        steps_per_epoch: None (the rate decays every step) or an int >= 1:
            the rate of epoch `e` (from 0) of `E = ceil(total_steps /
            steps_per_epoch)` is `learning_rate * (1 + cos(pi * e / E)) / 2`
            for all its steps.

    Returns:
        A dict of `optimizer`, `loss` and `metrics` for `model.compile`.

    Example:

    `backbone` a feature extractor, e.g. from `keras_ersm.backbones.create`:

    >>> backbone = keras_ersm.backbones.create("ResNet50", (64, 64, 3),
    ...                                        weights=None)
    >>> model = keras_ersm.build_classifier(
    ...     backbone, 37, **keras_ersm.presets.mask_kwargs("authors"))
    >>> model.compile(**keras_ersm.models.authors_recipe(
    ...     20 * 115, steps_per_epoch=115))
    """
    caller = "`authors_recipe`"
    validation.check_integer(caller, "total_steps", total_steps, 1)
    validation.check_number(caller, "learning_rate", learning_rate,
                            "a finite number > 0", lambda v: v > 0)
    validation.check_number(caller, "weight_decay", weight_decay,
                            "a finite number >= 0", lambda v: v >= 0)
    validation.check_integer(caller, "steps_per_epoch", steps_per_epoch, 1,
                             optional=True)
    if steps_per_epoch is None:
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=learning_rate, decay_steps=int(total_steps)
        )
    elif total_steps <= steps_per_epoch:
        # One epoch: its rate is the first (and a piecewise schedule
        # needs a boundary).
        schedule = learning_rate
    else:
        epochs = math.ceil(total_steps / steps_per_epoch)
        # The rate of step s (counted from 0) is values[i] for
        # boundaries[i - 1] < s <= boundaries[i]: epoch e starts at step
        # e * steps_per_epoch.
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries=[steps_per_epoch * epoch - 1
                        for epoch in range(1, epochs)],
            values=[learning_rate * (1 + math.cos(math.pi * epoch / epochs))
                    / 2 for epoch in range(epochs)],
        )
    return {
        "optimizer": keras.optimizers.AdamW(
            learning_rate=schedule, weight_decay=weight_decay
        ),
        "loss": keras.losses.SparseCategoricalCrossentropy(),
        "metrics": ["accuracy"],
    }
