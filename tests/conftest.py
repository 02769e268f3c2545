import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests compile hundreds of small XLA programs on a CPU and run each a
# few times: LLVM's optimisation of the machine code would be a third of
# their time. XLA's graph passes (fusion, buffer assignment) still run, and
# the benchmarks, not the tests, measure speed. Subprocesses inherit it.
os.environ["XLA_FLAGS"] = " ".join(filter(None, [
    os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
FIXTURE_CASES = ("p1_square", "p2_square", "p1_rect_T2")


@pytest.fixture(autouse=True)
def float32_policy():
    """Every test starts and ends under the float32 policy."""
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


def load_reference_case(case):
    """One case of the authors' parity fixture, as a dict of arrays."""
    path = os.path.join(DATA_DIR, "ersm_reference_public.npz")
    with np.load(path) as archive:
        prefix = f"{case}/"
        return {
            key[len(prefix):]: archive[key]
            for key in archive.files
            if key.startswith(prefix)
        }


def relu_features(shape, seed):
    """Standard-normal features through a ReLU: about half exactly 0."""
    rng = np.random.default_rng(seed)
    return np.maximum(rng.normal(size=shape), 0.0).astype("float32")


def pytest_collection_modifyitems(items):
    """Files with slow tests first: the two test processes take whole files
    in this order, so the long ones start early instead of running alone
    at the end."""
    slow_files = {item.path for item in items
                  if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
