"""Makes TensorFlow absent from a Python process, as on a machine without it.

A process with this folder on its PYTHONPATH imports this module at start
(Python's `site` does), and from then on `import tensorflow` (and
`tensorflow_datasets`, `tf_keras`, their submodules) raises
ModuleNotFoundError, like an interpreter where they are not installed.
Used by the tests that prove the JAX backend path needs no TensorFlow.
"""

import sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "tf_keras")


class _Absent:
    """A meta path finder that finds the blocked packages missing."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return None


sys.meta_path.insert(0, _Absent())
