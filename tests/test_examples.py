"""Each example runs offline on small settings."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_ersm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, *args, **env):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", **env)
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", name), *args],
        capture_output=True, text=True, timeout=600, env=env,
    )


def test_train_classifier_on_the_offline_benchmark(tmp_path):
    # The docstring's offline command, at tiny sizes: a backbone pre-trained
    # on 64 images for one epoch (cached in tmp_path), 32x32 images, 2
    # epochs.
    export_dir = tmp_path / "ersm" / "1"
    result = run_example(
        "train_classifier.py", "--dataset", "ersm_benchmark", "--backbone",
        "MobileNetV2", "--weights", "benchmark", "--image-size", "32",
        "--batch-size", "16", "--epochs", "2", "--train-examples", "32",
        "--test-examples", "48", "--pretrain-epochs", "1",
        "--pretrain-examples", "64", "--export-dir", str(export_dir),
        KERAS_ERSM_CACHE=str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    # Attached after the layer with local tokens, at its default.
    assert ("EnergyMask() after MobileNetV2's 'block_5_expand_relu': (4, 4) "
            "tokens of 192 channels") in out
    assert "block_5_expand_relu_energy_mask_kept_fraction" in out
    # Fit, then the kept fraction over the test split ...
    match = re.search(r"^test \(48 images\): accuracy (\S+), kept fraction "
                      r"(\S+)$", out, re.M)
    assert match, out[-3000:]
    assert 0 <= float(match.group(1)) <= 1
    assert 0 <= float(match.group(2)) <= 1
    # ... and the masks of 3 test images, as 4x4 grids of '#' and '.'.
    shown = re.findall(r"^test image of class \d+: kept (\S+) of 4x4 "
                       r"tokens\n((?:  [#.](?: [#.]){3}\n){4})", out, re.M)
    assert len(shown) == 3, out[-3000:]
    for kept, grid in shown:
        assert float(kept) == round(grid.count("#") / 16, 3)
    # Exported.
    assert (f"SavedModel in {export_dir}, signatures ['serving_default', "
            "'explain']") in out
    assert (export_dir / "saved_model.pb").is_file()


def test_train_classifier_takes_benchmark_weights_on_the_benchmark_only():
    path = os.path.join(REPO, "examples", "train_classifier.py")
    spec = importlib.util.spec_from_file_location("train_classifier", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with pytest.raises(SystemExit) as error:
        example.parse_args(["--dataset", "cifar10", "--weights",
                            "benchmark"])
    assert error.value.code == 2
    args = example.parse_args([])
    assert (args.dataset, args.weights, args.feature_layer) == (
        "oxford_iiit_pet", "imagenet", "auto")


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
