"""`MaskOptions`: the hyperparameters of an energy mask, each defined once.

Every hyperparameter of the ERSM energy is one field of `MaskOptions`, with
its default, the values it accepts and its help. The rest of the package
reads them from here:

* `EnergyMask` takes them as keyword arguments, lists them in its
  docstring and `get_config`, and exposes them as `layer.options`;
* `energy_kernel.apply_energy_mask` takes a `MaskOptions`, and passes
  `token_energy_arguments()` to `energy.token_energy`;
* `ExperimentConfig.mask` is one, and `ersm train` has an option for each
  field (`command_line_arguments`).

Adding a hyperparameter is a field here plus its math in `energy`.
"""

import dataclasses
import textwrap
from typing import Callable
from typing import NamedTuple

from keras_ersm import energy
from keras_ersm import validation


class Domain(NamedTuple):
    """The values an option accepts.

    Attributes:
        expected: them in words, as error messages and help show them.
        check: `check(caller, name, value)`, the value as stored (an `int`,
            a `float`, a `str`) or a `ValueError` in the house style.
        command_line: `argparse` keyword arguments that parse them.
    """

    expected: str
    check: Callable
    command_line: dict


def _domain(expected, check, command_line, *check_arguments):
    """A `Domain` whose values pass `check(caller, name, value,
    *check_arguments)`, one of `validation`'s checks."""
    return Domain(
        expected,
        lambda caller, name, value: check(caller, name, value,
                                         *check_arguments),
        command_line,
    )


def integer(minimum):
    return _domain(f"an integer >= {minimum}", validation.check_integer,
                   {"type": int}, minimum)


def number(expected, is_valid):
    return _domain(expected, validation.check_number, {"type": float},
                   expected, is_valid)


def choice(choices):
    return _domain(f"one of {choices}", validation.check_choice,
                   {"choices": choices}, choices)


NON_NEGATIVE = number("a number >= 0", lambda v: v >= 0)
POSITIVE = number("a number > 0", lambda v: v > 0)


def _option(default, domain, help):
    return dataclasses.field(
        default=default, metadata={"domain": domain, "help": help}
    )


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

    patch_size: int = _option(
        1, integer(1), "side of a token in feature-map positions; must "
        "divide the input's height and width."
    )
    formulation: str = _option(
        "keeping_cost", choice(energy.FORMULATIONS),
        "the energy: the authors' `\"reference\"`, `\"coherent\"` or "
        "`\"keeping_cost\"`.",
    )
    unary_weight: float = _option(
        1e-2, NON_NEGATIVE, "lambda, weight of the unary energy."
    )
    pairwise_weight: float = _option(
        1e-2, NON_NEGATIVE, "gamma, weight of the pairwise energy."
    )
    # 2/3: the hard-concrete gate's beta in Louizos et al. (2018).
    temperature: float = _option(2 / 3, POSITIVE,
                                 "T, the gates' temperature.")
    energy_loss_weight: float = _option(
        1.0, NON_NEGATIVE, "multiplies the loss added with `add_loss`; 0 "
        "adds no loss."
    )
    mean_field_steps: int = _option(
        3, integer(0), "sweeps of mean-field updates (`\"coherent\"` only)."
    )
    coupling: float = _option(
        0.5, NON_NEGATIVE, "beta, strength of the coherence term "
        "(`\"coherent\"` only).",
    )
    damping: float = _option(
        1.0, number("a number in (0, 1]", lambda v: 0 < v <= 1),
        "eta, step size of each mean-field update (`\"coherent\"` only; 1 "
        "minimises each parity class exactly).",
    )
    neighbour_weights: str = _option(
        "uniform", choice(energy.NEIGHBOUR_WEIGHTS),
        "`\"uniform\"` (w_ij = 1) or `\"affinity\"` (w_ij = max(0, cosine "
        "similarity)) (`\"coherent\"` only).",
    )
    gate: str = _option(
        "hard_concrete", choice(energy.GATES),
        "`\"sigmoid\"` (`keep = sigmoid(-z / T)`, deterministic) or "
        "`\"hard_concrete\"` (a stochastic L0 gate in training, 0 or 1 at "
        "inference).",
    )
    output_scaling: str = _option(
        "mask_mass", choice(energy.OUTPUT_SCALINGS),
        "`\"none\"` (the map times the mask) or `\"mask_mass\"` (times the "
        "mask divided by its mean over the image's tokens plus "
        "`mask_mass_epsilon`).",
    )
    mask_mass_epsilon: float = _option(
        energy.MASK_MASS_EPSILON, POSITIVE,
        "eps of `\"mask_mass\"`: the default pools the mean of the kept "
        "tokens, larger values move towards their sum.",
    )
    caller: dataclasses.InitVar[str] = "MaskOptions"

    def __post_init__(self, caller):
        for field in dataclasses.fields(self):
            checked = check_option(caller, field.name,
                                   getattr(self, field.name))
            # Frozen: the checked value (an int, a float, a str) replaces
            # the given one (a NumPy scalar, say) once, here.
            object.__setattr__(self, field.name, checked)

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


def command_line_arguments():
    """`(flag, argparse keyword arguments)` of every option, in order: type
    or choices and help (the option's help and accepted values)."""
    for field in dataclasses.fields(MaskOptions):
        domain = field.metadata["domain"]
        help = field.metadata["help"].rstrip(".").replace("`", "")
        if "choices" not in domain.command_line:
            help += f"; {domain.expected}"
        yield ("--" + field.name.replace("_", "-"),
               dict(domain.command_line, help=help))


def _literal(value):
    """`value` as the docstrings write it: strings in double quotes."""
    return f'"{value}"' if isinstance(value, str) else repr(value)


def docstring_arguments(indent):
    """The options as the lines of a docstring's argument list."""
    lines = []
    for field in dataclasses.fields(MaskOptions):
        domain = field.metadata["domain"]
        # A choice's help names its values.
        accepts = ("" if "choices" in domain.command_line
                   else f"{domain.expected}, ")
        lines.append(textwrap.fill(
            f"{field.name}: {accepts}{field.metadata['help']} "
            f"Defaults to `{_literal(field.default)}`.",
            width=79, initial_indent=indent, subsequent_indent=indent + "    ",
            break_on_hyphens=False,
        ))
    return "\n".join(lines)


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
    "{options}\n", docstring_arguments(" " * 8) + "\n"
)
