"""Every python example of the README runs as written and shows what its
prose says."""

import os
import re

import pytest

import keras_ersm
from keras_ersm.mask_options import MaskOptions

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def python_blocks():
    """{the section's heading (with "-2", "-3", ... for a later block of
    the same section): the block's code}, in the README's order."""
    with open(README) as file:
        readme = file.read()
    blocks = {}
    section = None
    for match in re.finditer(r"^## ([^\n]+)$|^```python\n(.*?)^```", readme,
                             re.M | re.S):
        if match.group(1) is not None:
            section = match.group(1).strip()
            continue
        name, count = section, 1
        while name in blocks:
            count += 1
            name = f"{section}-{count}"
        blocks[name] = match.group(2)
    return blocks


def check_usage(namespace, printed):
    # A mask that keeps every token prints "kept 1.00 of the tokens, 0.06
    # of them on the square" (1 token of 16), one that keeps none "kept
    # 0.00 ..., nan ...".
    match = re.fullmatch(
        r"kept (\S+) of the tokens, (\S+) of them on the square",
        printed.strip().splitlines()[-1],
    )
    assert match, printed[-2000:]
    kept, on_square = float(match.group(1)), float(match.group(2))
    assert 0.0 < kept <= 0.2, printed[-2000:]
    assert on_square >= 0.6, printed[-2000:]
    # The README's mask is the package's default.
    assert namespace["model"].get_layer("mask").options == MaskOptions()


def check_backbones(namespace, printed):
    model = namespace["model"]
    assert model.get_layer("energy_mask").options == MaskOptions()
    assert model.output.shape == (None, 37)
    assert "conv4_block6_out_energy_mask" in namespace["masks"].output
    authors = namespace["authors"].get_layer("energy_mask").options
    assert authors == MaskOptions(
        **keras_ersm.presets.mask_kwargs("authors"))
    assert authors.formulation == "reference"
    assert namespace["layer"].options == authors


# What each block must show, by section; every block runs, checked or not.
CHECKS = {"Usage": check_usage, "Backbones": check_backbones}


def test_the_readme_has_the_python_examples_the_checks_expect():
    assert set(CHECKS) <= set(python_blocks())


@pytest.mark.parametrize("section", list(python_blocks()))
def test_readme_python_example_runs(section, capsys):
    namespace = {}
    exec(compile(python_blocks()[section], f"README.md ({section})", "exec"),
         namespace)
    if section in CHECKS:
        CHECKS[section](namespace, capsys.readouterr().out)


def test_readme_test_command_is_what_ci_runs():
    with open(README) as file:
        readme = file.read()
    with open(os.path.join(os.path.dirname(README), ".ci", "run")) as file:
        ci = file.read()
    command = "python -m pytest -q"
    assert command in readme and ci.rstrip().endswith(command)
