"""End to end: on frozen features of a pre-trained backbone, the default
mask learns a sparse, input-dependent mask on the object, and the
reference energy does not (benchmarks/mask_sweep.py, a reduced setting)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                "benchmarks"))

import mask_sweep  # noqa: E402

LEARNED = "keeping cost + hard concrete + mask mass"


@pytest.mark.slow
def test_the_default_mask_learns_and_the_reference_stays_uniform(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("KERAS_ERSM_CACHE", str(tmp_path / "cache"))
    mask_sweep.main([
        "--output", str(tmp_path), "--seeds", "0", "--epochs", "10",
        "--test-examples", "500", "--pretrain-epochs", "8",
        "--only", "reference", LEARNED,
    ])
    with open(tmp_path / "mask_sweep.json") as file:
        rows = {row["name"]: row for row in json.load(file)["rows"]}
    learned = rows[LEARNED]["mask"]
    kept = learned["kept_fraction"]
    assert 0.01 < kept["mean"] < 0.6
    assert kept["relative_std"] > 0.2  # depends on the input
    assert learned["empty_images"] < 0.1
    # Far above the share of tokens on the object.
    assert learned["kept_on_object"] > 2 * learned["object_token_base_rate"]
    # Less reliance on the background than the unmasked baseline.
    assert rows[LEARNED]["drop"] < rows["baseline (no mask)"]["drop"] - 0.1
    reference = rows["reference"]["mask"]["kept_fraction"]
    assert reference["mean"] == 1.0 and reference["std"] == 0.0
