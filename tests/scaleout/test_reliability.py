"""Reliability: determinism, resuming interrupted training, loading."""

import json
import zipfile

import keras
import numpy as np
import pytest
from scaleout_helpers import run_script
from scaleout_helpers import run_scripts

from keras_ersm import EnergyMask


def load(path):
    with np.load(path) as archive:
        return dict(archive)


def test_same_seed_gives_bit_identical_weights_and_masks(tmp_path):
    # Two processes: nothing but the seed and deterministic ops carries over.
    run_scripts(
        [
            ("determinism_check.py", (tmp_path / "a.npz", 1), {}),
            ("determinism_check.py", (tmp_path / "b.npz", 1, 2), {}),
        ]
    )
    first, second = load(tmp_path / "a.npz"), load(tmp_path / "b.npz")
    keys = [key for key in first if key.startswith("1/")]
    assert "1/masks" in keys and len(keys) == 7
    for key in keys:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    # Not vacuous: another seed trains to other weights and masks.
    for key in ("masks", "weight_0", "weight_2"):
        assert not np.array_equal(second[f"1/{key}"], second[f"2/{key}"])
    masks = first["1/masks"]
    assert 0.0 < masks.min() and masks.max() < 1.0


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("resume")
    run_script("resume_check.py", work_dir / "result.npz", work_dir)
    return load(work_dir / "result.npz")


def test_backup_and_restore_resumes_to_the_uninterrupted_weights(resumed):
    # Killed at batch 1 of epoch 1 with per-epoch backups: the restarted fit
    # loads the end-of-epoch-0 backup (into a model initialised differently)
    # and reruns epochs 1 and 2 only, ending bit-identical.
    np.testing.assert_array_equal(resumed["epoch/epochs_run"], [1, 2])
    for index in range(6):
        np.testing.assert_array_equal(
            resumed[f"epoch/weight_{index}"],
            resumed[f"reference/weight_{index}"],
        )


def test_step_backups_replay_the_interrupted_epoch(resumed):
    # Keras 3.15's BackupAndRestore with an integer save_freq restores the
    # mid-epoch weights but restarts that epoch at its first batch, so the
    # batches before the backup are applied twice (docs/scaleout.md). If this
    # starts failing, Keras resumes mid-epoch exactly: update the docs.
    np.testing.assert_array_equal(resumed["steps/epochs_run"], [1, 2])
    difference = max(
        np.max(np.abs(resumed[f"steps/{key}"] - resumed[f"reference/{key}"]))
        for key in (f"weight_{index}" for index in range(6))
    )
    assert difference > 1e-3


def saved_model(tmp_path):
    inputs = keras.Input((4, 4, 3))
    masked = EnergyMask(name="mask", patch_size=2)(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(masked))
    path = str(tmp_path / "model.keras")
    model.save(path)
    return model, path


def edit_mask_config(path, **changes):
    """Rewrites the EnergyMask layer's config inside a .keras file."""
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    (layer,) = [
        layer
        for layer in config["config"]["layers"]
        if layer["class_name"] == "EnergyMask"
    ]
    layer["config"].update(changes)
    files["config.json"] = json.dumps(config).encode()
    edited = path.replace(".keras", "_edited.keras")
    with zipfile.ZipFile(edited, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return edited


def test_keras_file_loads_in_safe_mode(tmp_path):
    model, path = saved_model(tmp_path)
    restored = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(0).random((2, 4, 4, 3)).astype("float32")
    np.testing.assert_array_equal(restored(x), model(x))


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"formulation": "paper"},
            "EnergyMask 'mask': argument `formulation` must be one of "
            "('reference', 'coherent', 'keeping_cost'); received 'paper'",
        ),
        (
            {"unary_weight": -0.5},
            "EnergyMask 'mask': argument `unary_weight` must be a number "
            ">= 0; received -0.5",
        ),
        (
            {"damping": 0.0},
            "EnergyMask 'mask': argument `damping` must be a number in "
            "(0, 1]; received 0.0",
        ),
    ],
)
def test_invalid_config_in_keras_file_fails_clearly(tmp_path, changes, message):
    _, path = saved_model(tmp_path)
    edited = edit_mask_config(path, **changes)
    # Unwrapped: Keras alone would bury it in two nested TypeErrors.
    with pytest.raises(ValueError) as error:
        keras.saving.load_model(edited, safe_mode=True)
    assert str(error.value) == message + "."
