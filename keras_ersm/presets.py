"""Named configurations of an `EnergyMask`, as its keyword arguments.

* `"learned"`: the defaults, `mask_options.LEARNED`, the mask that learns a
  sparse, object-centred mask on frozen features (docs/mask_learning.md).
* `"authors"`: the authors' energy, loss weights and temperature
  (`mask_options.AUTHORS`), with this package's trainable scalar bias
  (its trained mask keeps every token).
* `"authors_dynamics"`: the authors' layer as their code trains it: their
  energy, a per-position bias that starts at +6 (0.25% of every token kept)
  and never trains, and PyTorch's default initialisation of the score
  kernel (see ERSM.md).

Pass one to `EnergyMask`, `build_classifier` or `attach` with
`**mask_kwargs(preset)`, or use `EnergyMask.from_preset(preset)`.
"""

import copy

import keras

from keras_ersm import validation
from keras_ersm.initializers import FanInUniform
from keras_ersm.mask_options import AUTHORS
from keras_ersm.mask_options import LEARNED

# The layer arguments, besides the energy, of the authors' training dynamics.
AUTHORS_DYNAMICS = {
    "position_bias": True,
    "score_bias_initializer": {"class_name": "Constant",
                               "config": {"value": 6.0}},
    "score_bias_trainable": False,
    "score_kernel_initializer": {
        "class_name": keras.saving.get_registered_name(FanInUniform),
        "config": {"seed": None},
    },
}

PRESETS = {
    "learned": LEARNED.to_dict(),
    "authors": AUTHORS.to_dict(),
    "authors_dynamics": {**AUTHORS.to_dict(), **AUTHORS_DYNAMICS},
}


def mask_kwargs(preset, **changes):
    """The preset `preset` as keyword arguments of `EnergyMask`.

    Every option is in it (`patch_size` too): change one here rather than
    beside the `**` (a keyword given twice is a `TypeError`).

    Args:
        preset: one of `PRESETS`: "learned", "authors", "authors_dynamics".
        **changes: arguments of `EnergyMask` that replace the preset's.

    Returns:
        A new dict, to pass as `**kwargs` and change freely.

    Example:

    >>> kwargs = keras_ersm.presets.mask_kwargs("authors", patch_size=2)
    >>> kwargs["formulation"], kwargs["gate"], kwargs["patch_size"]
    ('reference', 'sigmoid', 2)
    """
    validation.check_choice("`mask_kwargs`", "preset", preset, list(PRESETS))
    return {**copy.deepcopy(PRESETS[preset]), **changes}
