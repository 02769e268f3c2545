"""Argument checks shared by the package's layers, functions and configs.

Every message reads "<owner>: argument `<argument>` must be <expected>;
received <value!r>.", where the owner names the class, layer or function
(e.g. "EnergyMask 'mask'", "ExperimentConfig", "authors_recipe"). The
evaluation functions' messages read as Keras's functions' do (`expect_integer`).
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


def invalid(owner, argument, expected, value):
    """The `ValueError` for a bad argument, in the house style."""
    return ValueError(
        f"{owner}: argument `{argument}` must be {expected}; "
        f"received {value!r}."
    )


def check_integer(owner, argument, value, minimum, maximum=None,
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
        raise invalid(owner, argument,
                      ("None or " if optional else "") + expected, value)
    return int(value)


def expect_integer(function_name, argument, value, minimum, optional=False):
    """`value` as an int >= `minimum`, or `None` if `optional`; the message
    reads "`function_name` expects `argument` to be an integer >= minimum.
    Received: argument=value"."""
    if optional and value is None:
        return None
    if not is_integer(value) or value < minimum:
        expected = ("None or " if optional else "") + f"an integer >= {minimum}"
        raise ValueError(
            f"`{function_name}` expects `{argument}` to be {expected}. "
            f"Received: {argument}={value!r}"
        )
    return int(value)


def expect_number(function_name, argument, value, expected, is_valid=None):
    """`value` as a float: finite and `is_valid` (if given); the message
    reads "`function_name` expects `argument` to be expected. Received:
    argument=value"."""
    if not is_finite_number(value) or (is_valid and not is_valid(value)):
        raise ValueError(
            f"`{function_name}` expects `{argument}` to be {expected}. "
            f"Received: {argument}={value!r}"
        )
    return float(value)


def check_number(owner, argument, value, expected, is_valid):
    """`value` as a float: finite and `is_valid`; `expected` describes it
    (e.g. "a number > 0")."""
    if not is_finite_number(value) or not is_valid(value):
        raise invalid(owner, argument, expected, value)
    return float(value)


def check_choice(owner, argument, value, choices):
    """`value`, one of `choices` (strings, or None), as a plain str."""
    # Compared one by one: a NumPy string array would compare elementwise.
    if not any(
        value is choice or (isinstance(value, str) and value == choice)
        for choice in choices
    ):
        raise invalid(owner, argument, f"one of {choices}", value)
    return None if value is None else str(value)


def check_bool(owner, argument, value):
    """`value` (Python's or NumPy's True or False) as a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise invalid(owner, argument, "True or False", value)
    return bool(value)
