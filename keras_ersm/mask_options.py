"""`MaskOptions`: the hyperparameters of an energy mask, each defined once.

Every hyperparameter of the ERSM energy is one field of `MaskOptions`, with
its default, the values it accepts and its help. The rest of the package
reads them from here:

* `EnergyMask` takes them as keyword arguments, lists them in its
  docstring and `get_config`, and exposes them as `layer.options`;
* `energy_kernel.apply_energy_mask` takes a `MaskOptions`, and passes
  `token_energy_arguments()` to `energy.token_energy`;
* `ExperimentConfig.mask` is one, and `ersm train` has an option for each
  field.

Each field is a `keras_ersm.fields.option`: the docstrings' lists and the
command-line options are generated from them. Adding a hyperparameter is a
field here plus its math in `energy`.
"""

import dataclasses

from keras_ersm import energy
from keras_ersm import fields
from keras_ersm.fields import NON_NEGATIVE
from keras_ersm.fields import POSITIVE
from keras_ersm.fields import choice
from keras_ersm.fields import integer
from keras_ersm.fields import number
from keras_ersm.fields import option

# The options the token-grid math (`energy.token_energy`) does not take.
_OUTSIDE_TOKEN_GRID = ("patch_size", "energy_loss_weight")


@dataclasses.dataclass(frozen=True)
class MaskOptions:
    """The hyperparameters of an energy mask, checked on construction.

    The defaults are the mask that learns a sparse, object-centred mask
    (`LEARNED`, docs/mask_learning.md): every kept token costs
    `unary_weight + pairwise_weight * its redundancy`, hard-concrete gates,
    the map divided by the mask's mean. `AUTHORS` is the authors' energy
    (arXiv 2604.06893). See `EnergyMask` for the formulations and
    `keras_ersm.energy` for the equations.

    Attributes (and arguments, by keyword):
{options}

    Args:
        caller: str, who is checking, the start of any error message
            ("MaskOptions" by default; the layer passes its name).

    Example:

    >>> options = MaskOptions(formulation="coherent", temperature=0.5)
    >>> options.temperature, options.gate
    (0.5, 'hard_concrete')
    >>> MaskOptions(temperature=0)
    Traceback (most recent call last):
    ...
    ValueError: MaskOptions: argument `temperature` must be a number > 0; received 0.
    """

    patch_size: int = option(
        1, integer(1), "side of a token in feature-map positions; must "
        "divide the input's height and width."
    )
    formulation: str = option(
        "keeping_cost", choice(energy.FORMULATIONS),
        "the energy: the authors' `\"reference\"`, `\"coherent\"` or "
        "`\"keeping_cost\"`.",
    )
    unary_weight: float = option(
        1e-2, NON_NEGATIVE, "lambda, weight of the unary energy."
    )
    pairwise_weight: float = option(
        1e-2, NON_NEGATIVE, "gamma, weight of the pairwise energy."
    )
    # 2/3: the hard-concrete gate's beta in Louizos et al. (2018).
    temperature: float = option(2 / 3, POSITIVE,
                                 "T, the gates' temperature.")
    energy_loss_weight: float = option(
        1.0, NON_NEGATIVE, "multiplies the loss added with `add_loss`; 0 "
        "adds no loss."
    )
    mean_field_steps: int = option(
        3, integer(0), "sweeps of mean-field updates (`\"coherent\"` only)."
    )
    coupling: float = option(
        0.5, NON_NEGATIVE, "beta, strength of the coherence term "
        "(`\"coherent\"` only).",
    )
    damping: float = option(
        1.0, number("a number in (0, 1]", lambda v: 0 < v <= 1),
        "eta, step size of each mean-field update (`\"coherent\"` only; 1 "
        "minimises each parity class exactly).",
    )
    neighbour_weights: str = option(
        "uniform", choice(energy.NEIGHBOUR_WEIGHTS),
        "`\"uniform\"` (w_ij = 1) or `\"affinity\"` (w_ij = max(0, cosine "
        "similarity)) (`\"coherent\"` only).",
    )
    gate: str = option(
        "hard_concrete", choice(energy.GATES),
        "`\"sigmoid\"` (`keep = sigmoid(-z / T)`, deterministic) or "
        "`\"hard_concrete\"` (a stochastic L0 gate in training, 0 or 1 at "
        "inference).",
    )
    output_scaling: str = option(
        "mask_mass", choice(energy.OUTPUT_SCALINGS),
        "`\"none\"` (the map times the mask) or `\"mask_mass\"` (times the "
        "mask divided by its mean over the image's tokens plus "
        "`mask_mass_epsilon`).",
    )
    mask_mass_epsilon: float = option(
        energy.MASK_MASS_EPSILON, POSITIVE,
        "eps of `\"mask_mass\"`: the default pools the mean of the kept "
        "tokens, larger values move towards their sum.",
    )
    caller: dataclasses.InitVar[str] = "MaskOptions"

    def __post_init__(self, caller):
        for name, value in fields.checked_values(self, caller).items():
            # Frozen: the checked value (an int, a float, a str) replaces
            # the given one (a NumPy scalar, say) once, here.
            object.__setattr__(self, name, value)

    @classmethod
    def names(cls):
        """The options' names, in order."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def pop_options(cls, arguments):
        """The options among the keyword arguments `arguments` (a dict),
        popped from it: the others (a layer's base arguments, say) stay."""
        return {name: arguments.pop(name) for name in cls.names()
                if name in arguments}

    @classmethod
    def with_defaults(cls, values):
        """`values` (a dict, say a saved layer config or `config.json`),
        with every option it does not name at its default before 0.2.0:
        what a layer saved before that option existed used.

        Every option is saved since it exists, and until 0.2.0 the defaults
        were the authors' energy (`AUTHORS`), so that is what an option
        missing from a saved config was.
        """
        return {**AUTHORS.to_dict(), **values}

    def to_dict(self):
        return dataclasses.asdict(self)

    def token_energy_arguments(self):
        """The keyword arguments of `energy.token_energy`."""
        return {name: value for name, value in self.to_dict().items()
                if name not in _OUTSIDE_TOKEN_GRID}


def check_option(caller, name, value):
    """`value` checked, and stored, as the option `name` is: for functions
    that take one option on its own."""
    field = MaskOptions.__dataclass_fields__[name]
    return field.metadata["domain"].check(caller, name, value)


# The mask that learns: the defaults.
LEARNED = MaskOptions()
# The authors' energy, loss weights and temperature (lambda = gamma = 1e-3,
# T = 1; see ERSM.md).
AUTHORS = MaskOptions(
    formulation="reference", gate="sigmoid", output_scaling="none",
    unary_weight=1e-3, pairwise_weight=1e-3, temperature=1.0,
)


# Replaced, not formatted: docstrings hold braces of their own.
MaskOptions.__doc__ = MaskOptions.__doc__.replace(
    "{options}\n", fields.docstring_arguments(MaskOptions, " " * 8) + "\n"
)
