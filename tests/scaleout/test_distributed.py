"""Scale-out: MirroredStrategy, multi-worker custom loop, the JAX backend."""

import importlib.util
import os
import re
import socket

import numpy as np
import pytest
import tensorflow as tf
from scaleout_helpers import REPO_ROOT
from scaleout_helpers import SCRIPTS
from scaleout_helpers import WITHOUT_TENSORFLOW
from scaleout_helpers import run_script
from scaleout_helpers import run_scripts


# float32 sums over two half batches vs one full batch differ in rounding
# only; after 4 SGD steps the weights agree to ~1e-6.
MIRRORED_ATOL = 1e-5


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    path = tmp_path_factory.mktemp("mirrored") / "result.npz"
    run_script("mirrored_check.py", path)
    with np.load(path) as result:
        return dict(result)


def weights(result, case, strategy, stage):
    prefix = f"{case}/{strategy}/{stage}_"
    count = sum(key.startswith(prefix) for key in result)
    return [result[f"{prefix}{index}"] for index in range(count)]


@pytest.mark.parametrize("case", ["task", "energy"])
def test_mirrored_strategy_matches_one_device(mirrored, case):
    assert mirrored[f"{case}/mirrored/replicas"] == 2
    assert mirrored[f"{case}/single/replicas"] == 1
    initial = weights(mirrored, case, "single", "initial")
    single = weights(mirrored, case, "single", "final")
    replicated = weights(mirrored, case, "mirrored", "final")
    for start, mirrored_start in zip(
        initial, weights(mirrored, case, "mirrored", "initial")
    ):
        np.testing.assert_array_equal(start, mirrored_start)
    for start, one, two in zip(initial, single, replicated):
        np.testing.assert_allclose(two, one, rtol=0, atol=MIRRORED_ATOL)
    # The conv kernel (0) and the score kernel (2) moved by far more than
    # the tolerance, so a wrong per-replica scale (x2 or x1/2) would fail.
    for index in (0, 2):
        assert np.max(np.abs(single[index] - initial[index])) > 100 * (
            MIRRORED_ATOL
        )
    np.testing.assert_allclose(
        mirrored[f"{case}/mirrored/loss"],
        mirrored[f"{case}/single/loss"],
        rtol=1e-5,
    )


def test_mirrored_energy_only_training_scales_energy_per_replica(mirrored):
    # With the energy as the only loss the head gets no gradient at all and
    # everything else moves: the energy loss alone drove the match above.
    initial = weights(mirrored, "energy", "mirrored", "initial")
    final = weights(mirrored, "energy", "mirrored", "final")
    np.testing.assert_array_equal(final[4], initial[4])  # head kernel
    assert np.max(np.abs(final[2] - initial[2])) > 1e-2  # score kernel


def test_kept_fraction_under_mirrored_strategy(mirrored):
    for key in ("kept_fraction", "evaluate_kept_fraction"):
        single = mirrored[f"task/single/{key}"]
        np.testing.assert_allclose(
            mirrored[f"task/mirrored/{key}"], single, atol=1e-6
        )
        assert np.all((single > 0.0) & (single < 1.0)), (key, single)


def free_ports(count):
    """`count` distinct ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("localhost", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def step_losses(stdout):
    """[(cross-entropy, energy)] per step, from the example's output."""
    return [
        (float(task), float(energy))
        for task, energy in re.findall(
            r"^step \d+: cross-entropy (\S+) energy (\S+)$", stdout, re.M
        )
    ]


def test_multi_worker_example_matches_one_worker():
    workers = [f"localhost:{port}" for port in free_ports(2)]
    script = os.path.join(REPO_ROOT, "examples", "multi_worker.py")
    args = ("--steps=3", "--global-batch-size=8", "--image-size=8")
    configs = [
        '{"cluster": {"worker": ["%s", "%s"]}, '
        '"task": {"type": "worker", "index": %d}}' % (*workers, index)
        for index in range(2)
    ]
    # Two workers on localhost, and one process alone (no TF_CONFIG) with
    # the same global batch, all at once.
    stdouts = run_scripts(
        [(script, args, {"TF_CONFIG": config}) for config in configs]
        + [(script, args, {"TF_CONFIG": None})],
        timeout=150,
    )
    assert "worker 0 of 2: replicas 2" in stdouts[0], stdouts[0]
    assert "worker 1 of 2: replicas 2" in stdouts[1], stdouts[1]
    assert "worker 0 of 1: replicas 1" in stdouts[2], stdouts[2]
    checksums = [
        re.search(r"weights sha256 ([0-9a-f]{64})", stdout).group(1)
        for stdout in stdouts
    ]
    # Both workers applied the same all-reduced updates, bit for bit ...
    assert checksums[0] == checksums[1]
    losses = [step_losses(stdout) for stdout in stdouts]
    assert losses[0] == losses[1] and len(losses[0]) == 3
    # ... and the updates of one worker with the whole global batch: from
    # step 1 on, the losses depend on the weights (printed to 1e-6).
    np.testing.assert_allclose(losses[0], losses[2], rtol=0, atol=2e-6)


@pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="jax is not installed"
)
def test_layer_and_fit_on_the_jax_backend(tmp_path, monkeypatch):
    path = tmp_path / "jax.npz"
    # In a process where TensorFlow cannot be imported.
    run_script("jax_smoke.py", path, KERAS_BACKEND="jax",
               PYTHONPATH=os.pathsep.join([REPO_ROOT, WITHOUT_TENSORFLOW]))
    with np.load(path) as result:
        result = dict(result)
    assert str(result["backend"]) == "jax"
    assert not result["tensorflow_importable"]
    monkeypatch.syspath_prepend(SCRIPTS)
    jax_smoke = importlib.import_module("jax_smoke")
    # The same layer on TensorFlow (this process) gives the same numbers.
    layer = jax_smoke.smoke_layer()
    outputs = layer(result["features"])
    np.testing.assert_allclose(result["outputs"], outputs, atol=1e-6)
    np.testing.assert_allclose(
        result["energy_loss"], layer.losses[0], rtol=1e-5
    )
    np.testing.assert_allclose(
        result["eager_kept_fraction"], layer.kept_fraction.result()
    )
    # The hand-written gradient through jax.vjp equals TensorFlow's.
    x, kernel, bias, u, v = (
        tf.constant(value) for value in jax_smoke.gradient_inputs()
    )
    with tf.GradientTape() as tape:
        tape.watch([x, kernel, bias])
        objective = jax_smoke.gradient_objective(x, kernel, bias, u, v)
    for name, gradient in zip(
        ("grad_x", "grad_kernel", "grad_bias"),
        tape.gradient(objective, [x, kernel, bias]),
    ):
        np.testing.assert_allclose(
            result[name], gradient, rtol=1e-4, atol=1e-5, err_msg=name
        )
    assert np.all(np.isfinite(result["loss"]))
    assert result["loss"][-1] < result["loss"][0]
    assert np.isfinite(result["evaluate_loss"])
    # fit and evaluate log the kept fraction of the masks (a layer's metric
    # read NaN under JAX's stateless fit, keras-team/keras#21639): with the
    # weights fixed, each epoch's is that of the masks of all the images;
    # evaluate's is that of the trained model's masks.
    expected = np.mean(result["frozen_masks"] > 0.5)
    assert 0.1 < expected < 0.9
    assert abs(expected - result["frozen_masks"].mean()) > 0.02
    np.testing.assert_allclose(
        result["frozen_kept_fraction"], [expected] * 2, rtol=1e-6
    )
    np.testing.assert_allclose(
        result["evaluate_kept_fraction"],
        np.mean(result["masks"] > 0.5), rtol=1e-6,
    )
    assert np.all((result["kept_fraction"] > 0) & (result["kept_fraction"] < 1))
    # mask_model gives the masks explain does; a .keras round trip keeps the
    # layer's configuration and the model's predictions.
    np.testing.assert_allclose(
        result["mask_model_masks"], result["masks"], atol=1e-6
    )
    assert str(result["loaded_mask_config"]) == str(result["mask_config"])
    np.testing.assert_array_equal(
        result["loaded_predictions"], result["predictions"]
    )
