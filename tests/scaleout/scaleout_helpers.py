"""Helpers for the scale-out tests: scripts run in processes of their own.

Device configuration (logical CPUs), op determinism, the Keras backend and
TF_CONFIG are process-wide, so the checks that need them run as scripts from
`scripts/` in a fresh interpreter that imports this checkout.
"""

import os
import subprocess
import sys
import time

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")
# On a child's PYTHONPATH: `import tensorflow` fails there.
WITHOUT_TENSORFLOW = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "without_tensorflow"
)


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


def run_scripts(calls, timeout=240):
    """Runs scripts concurrently; fails the test if one errs or times out.

    Args:
        calls: `(script, args, env)` triples: a file name in `scripts/` (or
            an absolute path), its command-line arguments and environment
            overrides (see `python_env`).
        timeout: seconds for all of them together; then all are killed.

    Returns:
        The scripts' standard outputs.
    """
    deadline = time.monotonic() + timeout
    processes = []
    try:
        for name, args, env in calls:
            command = [sys.executable, os.path.join(SCRIPTS, name)]
            processes.append(
                subprocess.Popen(
                    command + [str(arg) for arg in args],
                    env=python_env(**env),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        outputs = [
            process.communicate(timeout=max(deadline - time.monotonic(), 1))
            for process in processes
        ]
    except subprocess.TimeoutExpired:
        pytest.fail(f"{[c[0] for c in calls]} did not finish in {timeout} s")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for (name, _, _), process, (_, stderr) in zip(calls, processes, outputs):
        if process.returncode:
            pytest.fail(
                f"{name} exited with {process.returncode}:\n{stderr[-4000:]}"
            )
    return [stdout for stdout, _ in outputs]


def run_script(name, *args, timeout=240, **env):
    """Runs `scripts/<name>` with `args` and environment overrides `env`."""
    return run_scripts([(name, args, env)], timeout=timeout)[0]
