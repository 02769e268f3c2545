"""The `ersm` command: a quiet console, then `keras_ersm.cli`.

TensorFlow logs from its C++ code as soon as it is imported, and
`import keras_ersm` imports it; this module sits outside the package so
that the command can quiet TensorFlow before anything imports it.

    python -m keras_ersm_launcher demo --quick    # what `ersm` runs
"""

import ctypes
import os
import sys

NO_GPU_WARNING = (
    "ersm: warning: this machine has an NVIDIA driver, but TensorFlow finds "
    "no GPU: everything runs on the CPU. `--verbose` shows TensorFlow's "
    "messages about it; `pip install \".[gpu]\"` installs a CUDA-enabled "
    "TensorFlow."
)


def quiet_tensorflow():
    """Import TensorFlow and look for GPUs with its C++ logging kept off
    the console.

    Sets `TF_CPP_MIN_LOG_LEVEL=3` (unless the environment sets it: that
    choice is kept), which drops TensorFlow's C++ INFO, WARNING and ERROR
    lines (errors that matter still raise in Python), and imports
    TensorFlow with the process's standard error pointed at `os.devnull`:
    its libraries log a few lines while they load, before absl's logging is
    initialised, which no setting silences (tensorflow/tensorflow#100442).
    An import that fails raises as usual, once standard error is back.
    Python warnings, e.g. of a missing extra, are not affected.

    TensorFlow looks for GPUs once, at the first device query, after the
    import: on a machine without one, its CUDA probe then logs "failed
    call to cuInit: ..." as an ERROR, which a `TF_CPP_MIN_LOG_LEVEL` below
    3 set by the environment lets through. That query is made here too,
    with standard error pointed at `os.devnull`. Where the failure matters,
    on a machine with an NVIDIA driver whose GPU TensorFlow cannot use, one
    line says so (`NO_GPU_WARNING`).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow

        gpus = tensorflow.config.list_physical_devices("GPU")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    if not gpus and nvidia_driver_installed():
        print(NO_GPU_WARNING, file=sys.stderr, flush=True)


def nvidia_driver_installed():
    """Whether this machine has an NVIDIA driver: a GPU that TensorFlow
    could use if it were built for it and found its libraries."""
    if os.path.exists("/proc/driver/nvidia/version"):
        return True
    # WSL2 and containers: the driver's library without /proc/driver.
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def main(argv=None):
    """Run `ersm` with `argv` (default: the command line's arguments);
    TensorFlow logs as it would without `ersm` only with `--verbose`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--verbose" not in argv:
        quiet_tensorflow()
    from keras_ersm import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
