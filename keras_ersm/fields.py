"""Dataclass fields defined once: default, accepted values and help.

A field made by `option` carries the values it accepts (a `Domain`) and its
help as metadata; from them this module checks an instance's values
(`checked_values`) and writes the fields' docstring lines
(`docstring_arguments`) and command-line options
(`command_line_arguments`). `MaskOptions` and `ExperimentConfig` are made
of such fields.
"""

import argparse
import dataclasses
import textwrap
from typing import Callable
from typing import NamedTuple

from keras_ersm import validation


class Domain(NamedTuple):
    """The values a field accepts.

    Attributes:
        expected: them in words, as help and docstrings show them; `None`
            where the help names them (a choice).
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


def integer(minimum, maximum=None, optional=False):
    expected = (f"an integer >= {minimum}" if maximum is None
                else f"an integer in [{minimum}, {maximum}]")
    return _domain(("None or " if optional else "") + expected,
                   validation.check_integer, {"type": int}, minimum, maximum,
                   optional)


def number(expected, is_valid):
    return _domain(expected, validation.check_number, {"type": float},
                   expected, is_valid)


def choice(choices, parse=None):
    """One of `choices`; on the command line `parse` reads it if given
    (e.g. in any case), else argparse's `choices`."""
    command_line = {"choices": choices} if parse is None else {"type": parse}
    return _domain(None, validation.check_choice, command_line, choices)


NON_NEGATIVE = number("a number >= 0", lambda v: v >= 0)
POSITIVE = number("a number > 0", lambda v: v > 0)
BOOL = _domain("True or False", validation.check_bool,
               {"action": argparse.BooleanOptionalAction})


def option(default=dataclasses.MISSING, domain=None, help=None, *,
           default_factory=dataclasses.MISSING, doc=None,
           on_command_line=True):
    """A dataclass field with its default, its `Domain` and its help.

    Args:
        default: the default value.
        domain: the `Domain` of its values.
        help: what it does, as the command line's help and (unless `doc`
            is given) the docstring say it.
        default_factory: in place of `default`, the class whose instance
            with no arguments is the default.
        doc: the docstring's words, where the command line spells values
            otherwise (`'none'` for `None`, a flag for an argument).
        on_command_line: whether it has a command-line option.
    """
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={
            "domain": domain, "help": help, "doc": doc or help,
            "on_command_line": on_command_line,
        },
    )


def checked_values(instance, caller):
    """{name: value as its domain checks and stores it} of every field of
    the dataclass `instance`; `caller` starts any error message."""
    return {
        field.name: field.metadata["domain"].check(
            caller, field.name, getattr(instance, field.name))
        for field in dataclasses.fields(instance)
    }


def _literal(value):
    """`value` as the docstrings write it: strings in double quotes."""
    return f'"{value}"' if isinstance(value, str) else repr(value)


def docstring_arguments(cls, indent):
    """The fields of the dataclass `cls` as the lines of a docstring's
    argument list: accepted values, help, default."""
    lines = []
    for field in dataclasses.fields(cls):
        expected = field.metadata["domain"].expected
        accepts = "" if expected is None else f"{expected}, "
        doc = field.metadata["doc"]
        if field.default is dataclasses.MISSING:
            default = f"{field.default_factory.__name__}()"
        else:
            default = _literal(field.default)
        lines.append(textwrap.fill(
            f"{field.name}: {accepts}{doc}{'' if doc.endswith('.') else '.'}"
            f" Defaults to `{default}`.",
            width=79, initial_indent=indent, subsequent_indent=indent + "    ",
            break_on_hyphens=False,
        ))
    return "\n".join(lines)


def command_line_argument(field, show_expected):
    """`(flag, argparse keyword arguments)` of a field: how to parse it, and
    its help, with its accepted values if `show_expected`, and default."""
    domain = field.metadata["domain"]
    help = field.metadata["help"].rstrip(".").replace("`", "")
    if show_expected and domain.expected is not None:
        help += f"; {domain.expected}"
    return ("--" + field.name.replace("_", "-"),
            dict(domain.command_line, help=f"{help} (default: "
                 f"{field.default})"))


def command_line_arguments(cls, show_expected=True):
    """`command_line_argument` of every field of the dataclass `cls` that
    has a command-line option, in order."""
    for field in dataclasses.fields(cls):
        if field.metadata["on_command_line"]:
            yield command_line_argument(field, show_expected)
