"""Argument checks shared by the package's layers, functions and configs.

Every message of a bad argument reads "<caller>: argument `<argument>` must
be <expected>; received <value!r>.", where the caller names the class, layer
or function (e.g. "EnergyMask 'mask'", "ExperimentConfig",
"`deletion_curves`"); a sentence on how to fix it may follow. Callers are
spelt one way: a function by its name in backticks ("`attach`"), a class by
its bare name ("MaskTensorBoard"), a layer by its class and quoted name
("EnergyMask 'mask'").
"""

import math
import numbers

import numpy as np


def is_integer(value):
    """Whether `value` is an integer (Python's or NumPy's), not a bool."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def is_finite_number(value):
    """Whether `value` is a real number (not a bool), neither NaN nor
    infinite."""
    return (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
    )


def invalid(caller, argument, expected, value=None, *, received=None,
            hint=None):
    """The `ValueError` for a bad argument, in the house style.

    Args:
        caller: what takes the argument, e.g. "`deletion_curves`".
        argument: the argument's name.
        expected: what it must be, e.g. "an integer >= 1".
        value: the value received, shown by its repr.
        received: text shown instead of `value`'s repr, where that repr
            would not show what is wrong (e.g. "masks of shape (2, 5, 5)").
        hint: a sentence that follows the message: how to fix it.
    """
    if received is None:
        received = repr(value)
    message = (
        f"{caller}: argument `{argument}` must be {expected}; "
        f"received {received}."
    )
    return ValueError(message if hint is None else f"{message} {hint}")


def check_integer(caller, argument, value, minimum, maximum=None,
                  optional=False):
    """`value` as an int in `[minimum, maximum]`, or `None` if `optional`."""
    if optional and value is None:
        return None
    if (
        not is_integer(value)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        expected = (f"an integer >= {minimum}" if maximum is None
                    else f"an integer in [{minimum}, {maximum}]")
        raise invalid(caller, argument,
                      ("None or " if optional else "") + expected, value)
    return int(value)


def check_number(caller, argument, value, expected, is_valid=None):
    """`value` as a float: finite and `is_valid` (if given); `expected`
    describes it (e.g. "a number > 0")."""
    if not is_finite_number(value) or (is_valid and not is_valid(value)):
        raise invalid(caller, argument, expected, value)
    return float(value)


def divides_expected(what):
    """What `patch_size` must be for the map `what` (e.g. "the input")."""
    return f"an integer that divides the height and width of {what}"


def check_divides(caller, patch_size, height, width, what):
    """`patch_size` as an int >= 1 that divides `height` and `width`, the
    sides of a map; a side that is `None` (unknown until the map is seen)
    is not checked. `what` names the map, e.g. "the feature map"."""
    patch_size = check_integer(caller, "patch_size", patch_size, minimum=1)
    if any(side is not None and side % patch_size
           for side in (height, width)):
        raise invalid(
            caller, "patch_size",
            f"{divides_expected(what)} ({height} x {width})", patch_size,
        )
    return patch_size


def check_choice(caller, argument, value, choices):
    """`value`, one of `choices` (strings, or None), as a plain str."""
    # Compared one by one: a NumPy string array would compare elementwise.
    if not any(
        value is choice or (isinstance(value, str) and value == choice)
        for choice in choices
    ):
        raise invalid(caller, argument, f"one of {choices}", value)
    return None if value is None else str(value)


def check_bool(caller, argument, value):
    """`value` (Python's or NumPy's True or False) as a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise invalid(caller, argument, "True or False", value)
    return bool(value)
