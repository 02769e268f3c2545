"""The authors' training recipe: optimiser, schedule and loss.

`authors_recipe` gives them as `model.compile` arguments (see ERSM.md);
their mask is `keras_ersm.presets`' "authors".
"""

import math

import keras

from keras_ersm import fields
from keras_ersm import validation


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
    >>> model.compile(**keras_ersm.recipes.authors_recipe(
    ...     20 * 115, steps_per_epoch=115))
    """
    caller = "`authors_recipe`"
    validation.check_integer(caller, "total_steps", total_steps, 1)
    learning_rate = fields.POSITIVE.check(caller, "learning_rate",
                                          learning_rate)
    weight_decay = fields.NON_NEGATIVE.check(caller, "weight_decay",
                                             weight_decay)
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
