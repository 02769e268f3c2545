"""Each example runs offline on small settings."""

import json
import os
import subprocess
import sys

import keras
import numpy as np

import keras_ersm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, *args):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", name), *args],
        capture_output=True, text=True, timeout=600, env=env,
    )


def test_train_classifier_on_the_offline_benchmark():
    result = run_example(
        "train_classifier.py", "--dataset", "ersm_benchmark", "--backbone",
        "MobileNetV2", "--weights", "none", "--no-freeze", "--image-size",
        "32", "--batch-size", "16", "--epochs", "1", "--train-examples", "32",
        "--test-examples", "48", "--formulation", "coherent",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "energy_mask_kept_fraction" in result.stdout
    assert "test (48 images):" in result.stdout
    assert "energy_mask: token grid (1, 1)" in result.stdout


def test_export_and_serve_reloads_without_the_package(tmp_path):
    export_dir = tmp_path / "ersm" / "1"
    result = run_example("export_and_serve.py", "--export-dir",
                         str(export_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines()
                if l.startswith("Reloaded without keras_ersm"))
    shapes = json.loads(line.split("output shapes:", 1)[1])
    assert shapes["serving_default"] == {"predictions": [2, 10]}
    assert shapes["explain"]["energy_mask_keep"] == [2, 8, 8]
    explain = json.loads((tmp_path / "ersm" / "explain_request.json")
                         .read_text())
    assert explain["signature_name"] == "explain"
    # Each instance names the serving input: `export`'s "images".
    (instance,) = explain["instances"]
    assert list(instance) == ["images"]
    assert np.asarray(instance["images"]).shape == (32, 32, 3)
    request = json.loads((tmp_path / "ersm" / "request.json").read_text())
    assert request["instances"] == explain["instances"]


def test_export_and_serve_takes_a_model_built_on_a_list_of_inputs(
        tmp_path):
    # The demo's ersm.keras: built with `keras.Model(ersm.inputs, ...)`.
    inputs = keras.Input((16, 16, 3), name="image")
    masked = keras_ersm.EnergyMask()(keras.layers.Conv2D(4, 2, 2)(inputs))
    outputs = keras.layers.Dense(3)(
        keras.layers.GlobalAveragePooling2D()(masked))
    path = str(tmp_path / "listed.keras")
    keras.Model([inputs], outputs).save(path)
    result = run_example("export_and_serve.py", "--model", path,
                         "--export-dir", str(tmp_path / "ersm" / "1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Reloaded without keras_ersm" in result.stdout


def test_examples_refuse_counts_below_one():
    for name, option in (("train_classifier.py", "--epochs"),
                         ("multi_worker.py", "--global-batch-size")):
        result = run_example(name, option, "0")
        assert result.returncode == 2, result.stderr[-3000:]
        assert f"{option} must be at least 1; received 0." in result.stderr
