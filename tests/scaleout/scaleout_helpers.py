"""Helpers for the scale-out tests: scripts run in processes of their own.

Device configuration (logical CPUs), op determinism, the Keras backend and
TF_CONFIG are process-wide, so the checks that need them run as scripts from
`scripts/` in a fresh interpreter that imports this checkout.
"""

import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


def python_env(**overrides):
    """The environment for a child interpreter that imports this checkout.

    Keyword arguments set variables; a value of None removes one.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [REPO_ROOT] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_script(name, *args, timeout=240, **env):
    """Runs `scripts/<name>` with `args`; fails the test on error or timeout.

    `subprocess.run` kills the child when `timeout` expires.
    """
    command = [sys.executable, os.path.join(SCRIPTS, name), *map(str, args)]
    try:
        result = subprocess.run(
            command,
            env=python_env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} did not finish within {timeout} s")
    if result.returncode:
        pytest.fail(
            f"{name} exited with {result.returncode}:\n{result.stderr[-4000:]}"
        )
    return result
