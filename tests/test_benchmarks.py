"""The benchmark scripts still run, on tiny shapes (their numbers are in
BENCHMARKS.md; nothing here is timed)."""

import os
import sys
import time

import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                          "benchmarks")
sys.path.insert(0, BENCHMARKS)

import layer_cost  # noqa: E402
import xla_memory  # noqa: E402
from _timing import interleaved_medians  # noqa: E402


def assert_gradients_of_the_map(gradients, x):
    """A layer step's first gradient is the input's: finite, its shape."""
    input_gradient = np.asarray(gradients[0])
    assert input_gradient.shape == tuple(x.shape)
    assert np.isfinite(input_gradient).all()


def test_layer_cost_candidates_compute_their_gradients():
    shape = (2, 4, 4, 8)
    runs = layer_cost.candidates_for(shape, 2, peers=True)
    assert {("floor", "plain"), ("floor", "xla"), ("reference", "default"),
            ("coherent", "xla"), ("learned", "default"), ("learned", "xla"),
            ("cbam_spatial", "plain")} <= set(runs)
    x, u, m = (t.numpy() for t in layer_cost.step_inputs(shape))
    for config in ("plain", "xla"):
        # The floor y = x * m: dy/dx = u * m, dy/dm = sum over channels
        # of u * x.
        x_gradient, m_gradient = runs[("floor", config)]()
        np.testing.assert_allclose(x_gradient, u * m, rtol=1e-6)
        np.testing.assert_allclose(
            m_gradient, (u * x).sum(axis=-1, keepdims=True), rtol=1e-5,
            atol=1e-6,
        )
    for name, run in runs.items():
        if name[0] != "floor":
            assert_gradients_of_the_map(run(), x)


def test_interleaved_medians_times_each_candidate():
    medians = interleaved_medians(
        {"sleep": lambda: time.sleep(0.02), "nothing": lambda: None},
        repeats=3, warmup=1,
    )
    sleep_median, sleep_times = medians["sleep"]
    nothing_median, nothing_times = medians["nothing"]
    assert len(sleep_times) == len(nothing_times) == 3
    assert 0.02 <= sleep_median < 1.0
    assert 0 <= nothing_median < sleep_median


@pytest.mark.parametrize("candidate", ["floor", "reference"])
def test_xla_memory_reads_the_buffer_assignment(candidate):
    # A compiled step holds at least its input, the upstream gradient and
    # the input gradient (three maps); the report's format is XLA's, so
    # this fails if a TensorFlow upgrade changes it.
    map_bytes = 4 * 2 * 4 * 6 * 16
    allocated, live = xla_memory.compiled_bytes(
        "layer", "2,4,6,16", "1", candidate, "float32"
    )
    assert 3 * map_bytes <= live <= allocated < 100 * map_bytes


def test_statistics_cost_candidates_run():
    import statistics_cost

    runs = statistics_cost.candidates_for((2, 4, 32, 8), 1)
    assert set(runs) == {"floor", ("statistics", False), ("statistics", True),
                         ("gram", False), ("gram", True),
                         "layer forward", "layer step"}
    x = layer_cost.step_inputs((2, 4, 32, 8))[0].numpy()
    for jit in (False, True):
        # The Gram matrices x x^T of consecutive blocks of pixels.
        gram = runs[("gram", jit)]().numpy()
        rows = x.reshape(-1, gram.shape[1], 8)
        np.testing.assert_allclose(
            gram, np.einsum("rwc,rvc->rwv", rows, rows), rtol=1e-5, atol=1e-5,
        )
    # The statistics are the same with XLA and without.
    for plain, compiled in zip(runs[("statistics", False)](),
                               runs[("statistics", True)]()):
        np.testing.assert_allclose(plain, compiled, rtol=1e-4, atol=1e-5)
    assert_gradients_of_the_map(runs["layer step"](), x)
    output, loss = runs["layer forward"]()
    assert output.shape == x.shape and np.isfinite(float(loss))


def test_live_peak_bytes_merges_values_that_share_bytes():
    # Four values in XLA's report format: `a` lives throughout in
    # allocation 0; `b` and `c` share allocation 1's first 50 bytes, `c`
    # updating `b` in place at step 2; `d` sits next to them at step 3.
    # Live bytes per step: 100, 150, 150 (b and c overlap), 180.
    report = """BufferAssignment:
allocation 0: size 100, parameter 0, shape |f32[25]| at ShapeIndex {}:
 value: <1 a @0> (size=100,offset=0): f32[25]{0}
allocation 1: size 80, preallocated-temp:
 value: <2 b @0> (size=50,offset=0): f32[12]{0}
 value: <3 c @0> (size=50,offset=0): f32[12]{0}
 value: <4 d @0> (size=30,offset=50): f32[7]{0}
allocation 2: size 4, thread-local:
 value: <5 x.1 @0> (size=4,offset=0): f32[]

Total bytes used: 184 (184B)

HloLiveRange (max 3):
  BufferLiveRange:
    a{}:0-3
    b{}:1-2
    c{}:2-3
    d{}:3-3
  Live ranges at 3 (peak):
"""
    assert xla_memory.live_peak_bytes(report) == 180


@pytest.mark.parametrize("candidate", ["floor", "reference", "coherent",
                                       "layer_normalization"])
def test_train_step_measures_each_layer_step_peak(monkeypatch, candidate):
    import train_step

    # Large enough for TensorFlow's allocator to count (kilobyte tensors
    # come from memory it already holds).
    monkeypatch.setattr(layer_cost, "SHAPES", {"small": ((2, 8, 8, 512), 1)})
    map_bytes = 4 * 2 * 8 * 8 * 512
    # At least the input gradient; nothing like a hundred maps.
    peak = train_step.layer_step_peak("small", candidate, "float32")
    assert map_bytes <= peak < 100 * map_bytes


def test_compare_revisions_traces_each_revision_with_its_own_kernels():
    import compare_revisions
    from keras_ersm import energy_kernel

    base = compare_revisions.kernel_at("HEAD")
    assert base is not energy_kernel.apply_energy_mask
    calls = []

    def counted_base(*args, **kwargs):
        calls.append(1)
        return base(*args, **kwargs)

    runs = compare_revisions.candidates_for((2, 4, 4, 8), 1, "reference",
                                            counted_base)
    assert set(runs) == {(version, config)
                         for version in ("floor", "base", "current")
                         for config in ("default", "xla")}
    # The base steps were traced with the base kernel.
    assert calls
    x = layer_cost.step_inputs((2, 4, 4, 8))[0]
    for (version, config), run in runs.items():
        if version != "floor":
            assert_gradients_of_the_map(run(), x)
    # Tracing restored the package's own function.
    assert energy_kernel.apply_energy_mask.__module__ == (
        "keras_ersm.energy_kernel"
    )


def test_compare_revisions_passes_older_kernels_the_options_they_know():
    import compare_revisions
    from keras_ersm.mask_options import MaskOptions

    def keyword_kernel(x, kernel, bias, *, patch_size, formulation,
                       temperature, noise=None):
        return (x, kernel, bias, patch_size, formulation, temperature, noise)

    call = compare_revisions._taking_options(keyword_kernel)
    options = MaskOptions(patch_size=2, formulation="coherent",
                          temperature=0.5, gate="hard_concrete")
    assert call("x", "k", "b", options, noise="n") == (
        "x", "k", "b", 2, "coherent", 0.5, "n")
    from keras_ersm import energy_kernel
    assert compare_revisions._taking_options(
        energy_kernel.apply_energy_mask) is energy_kernel.apply_energy_mask


@pytest.mark.slow
def test_gpu_check_smoke_prints_its_four_tables():
    # The GPU check runs only where a GPU is lent: its smoke setting keeps
    # it working in the meantime.
    import subprocess

    result = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "gpu_check.py"), "--smoke"],
        capture_output=True, text=True, timeout=900,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for title in ("1. ResNet50 32x32", "2. Peak", "3. Layer forward+backward",
                  "4. TF32 on vs off"):
        assert title in result.stdout, result.stdout
    tf32_rows = result.stdout.split("4. TF32 on vs off")[1].splitlines()[3:7]
    assert len(tf32_rows) == 4
    if "NOTE: no GPU visible" in result.stdout:
        for row in tf32_rows:  # on a CPU, TF32 changes nothing
            assert row.endswith("| 0.00e+00 | 0.00e+00 |"), row


def table_rows(stdout, title):
    """The cells of the rows of the table printed under `title`."""
    lines = stdout.split(title, 1)[1].splitlines()[3:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_gpu_check_smoke_on_jax_without_tensorflow():
    # The GPU machine has JAX but no TensorFlow: the check runs on Keras's
    # JAX backend there, chosen by itself when TensorFlow cannot be imported.
    import subprocess

    without_tensorflow = os.path.join(os.path.dirname(__file__),
                                      "without_tensorflow")
    env = {key: value for key, value in os.environ.items()
           if key != "KERAS_BACKEND"}
    env["PYTHONPATH"] = without_tensorflow
    result = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "gpu_check.py"), "--smoke"],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert ", jax " in out.splitlines()[0], out
    # Parity with the authors: every quantity of every fixture case within
    # the layer tests' tolerance.
    parity = table_rows(out, "1. Parity with the authors' fixture")
    assert [row[0] for row in parity] == ["p1_square", "p2_square",
                                          "p1_rect_T2"]
    for row in parity:
        assert row[-1] == "yes", row
        assert all(float(cell) < 1e-5 for cell in row[1:-1]), row
    precision = table_rows(out, "2. float32 matmul precision")
    assert [row[0] for row in precision] == ["reference", "coherent"]
    if "NOTE: no GPU visible" in out:
        for row in precision:  # a CPU computes float32 products in full
            assert row[1:] == ["0.00e+00", "0.00e+00"], row
    cost = table_rows(out, "3. Layer forward+backward / floor")
    assert [row[:2] for row in cost] == [
        [shape, dtype] for shape in ("smoke 2x2x64", "smoke 4x4x32 p2")
        for dtype in ("float32", "bfloat16", "float16")
    ]
    for row in cost:
        assert all(float(cell) > 0 for cell in row[2:]), row
    steps = table_rows(out, "4. ResNet50 32x32, batch 2")
    memory = table_rows(out, "5. Device memory of one training step")
    # The smoke steps a CPU can afford: mixed_bfloat16 only.
    expected = [["mixed_bfloat16", mask] for mask in ("none", "head", "mid")]
    assert [row[:2] for row in steps] == expected
    assert [row[:2] for row in memory] == expected
    for step, need in zip(steps, memory):
        assert float(step[2]) > 0
        # At least ResNet50's float32 weights (23.5M parameters, 90 MiB);
        # a mask on a 2x2048 or 2x2x2x1024 map adds well under 1 MiB.
        assert float(need[2]) > 90
        assert abs(float(need[3])) < 1, need
        if step[1] == "none":
            assert step[3] == "+0.0%" and need[3] == "+0.00"


def test_token_probe_counts_the_eight_neighbours_as_beside_the_object():
    import token_probe

    on_object = np.zeros((2, 4, 5), bool)
    on_object[0, 1, 1] = True
    on_object[1, 0, 3:5] = True  # at the edge: no wrap-around
    expected = np.zeros_like(on_object)
    expected[0, 0:3, 0:3] = True
    expected[0, 1, 1] = False
    expected[1, 0:2, 2:5] = True
    expected[1, 0, 3:5] = False
    np.testing.assert_array_equal(token_probe.beside(on_object), expected)
