"""Shared helpers: interleaved, side-by-side timing of tf.functions or jitted
JAX functions."""

import importlib
import os
import platform
import random
import statistics
import subprocess
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def machine():
    """One line describing this machine and the Keras backend."""
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import keras

    backend = keras.backend.backend()
    return (
        f"{cpu}, {os.cpu_count()} cores visible, {platform.system()}, "
        f"python {platform.python_version()}, {backend} "
        f"{importlib.import_module(backend).__version__}, "
        f"keras {keras.__version__}"
    )


def interleaved_medians(candidates, repeats=20, warmup=3, seed=0):
    """Median wall time (seconds) of every candidate, measured side by side.

    Args:
        candidates: dict name -> zero-argument callable that runs to
            completion (returns a numpy value or None; on JAX, blocks until
            its results are ready).
        repeats: timed rounds; in every round each candidate runs once, in a
            fresh random order, so slow phases of a shared machine hit every
            candidate alike.
        warmup: untimed rounds first (tracing, XLA compilation, caches).

    Returns:
        dict name -> (median, list of times).
    """
    rng = random.Random(seed)
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times = {name: [] for name in names}
    for _ in range(repeats):
        rng.shuffle(names)
        for name in names:
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), t) for name, t in times.items()}


def table(header, rows):
    """A markdown table as a string."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)
