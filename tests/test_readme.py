"""The README's usage example runs as written."""

import os
import re

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def test_readme_usage_example_runs(capsys):
    with open(README) as file:
        blocks = re.findall(r"```python\n(.*?)```", file.read(), re.S)
    assert blocks, "README.md has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert capsys.readouterr().out.strip().endswith("(2, 8, 8)")


def test_readme_test_command_is_what_ci_runs():
    with open(README) as file:
        readme = file.read()
    with open(os.path.join(os.path.dirname(README), ".ci", "run")) as file:
        ci = file.read()
    command = "python -m pytest -q"
    assert command in readme and ci.rstrip().endswith(command)
