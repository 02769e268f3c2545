"""`ersm summarize`: mean ± std over seeds, targets per seed and overall."""

import json

import pytest

from keras_ersm import cli
from keras_ersm.report import summary


def write_run(folder, seed, *, ersm_accuracy, drop, formulation="x"):
    folder.mkdir()
    config = {"seed": seed, "formulation": formulation, "gate": "sigmoid",
              "output_scaling": "none", "unary_weight": 0.01,
              "pairwise_weight": 0.01, "temperature": 1.0,
              "backbone": "BenchmarkConvNet", "weights": "benchmark",
              "freeze_backbone": True, "epochs": 20}
    metrics = {
        "accuracy": {"baseline": {"accuracy": 0.90},
                     "ersm": {"accuracy": ersm_accuracy}},
        "sparsity": {"kept_fraction": {"mean": 0.05}},
        "background": {"baseline": {"drop": 0.8}, "ersm": {"drop": drop}},
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return str(folder)


def test_groups_by_config_and_judges_with_every_seed(tmp_path):
    runs = [
        write_run(tmp_path / "a0", 0, ersm_accuracy=0.95, drop=0.1),
        write_run(tmp_path / "a1", 1, ersm_accuracy=0.85, drop=0.75),
        write_run(tmp_path / "b0", 0, ersm_accuracy=0.90, drop=0.5,
                  formulation="y"),
    ]
    result = summary.summarize_runs(runs)
    first, second = result["groups"]
    assert first["seeds"] == [0, 1] and second["seeds"] == [0]
    accuracy = first["measurements"]["ERSM accuracy"]
    assert accuracy["mean"] == pytest.approx(0.90)
    assert accuracy["std"] == pytest.approx(0.05)
    targets = first["targets"]
    # Mean difference 0, but seed 1 is 5 points below: not met.
    accuracy_target = targets[
        "accuracy within 1 point of the baseline (no seed 2 points below)"]
    assert accuracy_target["per_seed"] == [True, False]
    assert accuracy_target["met"] is False
    # The drop is 70 points smaller in seed 0, 5 in seed 1: not every seed.
    drop = targets[
        "test_shuffled drop 10 points smaller than the baseline's, every seed"]
    assert drop["per_seed"] == [True, False] and drop["met"] is False
    assert second["targets"][
        "test_shuffled drop 10 points smaller than the baseline's, every seed"
    ]["met"] is True
    # Measurements a run lacks are "not measured", not errors.
    assert targets["at least 45% of kept tokens on the object"]["met"] is None
    table = summary.summary_markdown(result)
    assert "| ERSM accuracy | 0.900 ± 0.050 | 0.900 ± 0.000 |" in table
    assert "| kept fraction in [0.03, 0.60] | met (✓/✓) | met (✓) |" in table


def test_the_command_writes_and_refuses_folders_without_runs(tmp_path, capsys):
    run = write_run(tmp_path / "a0", 0, ersm_accuracy=0.95, drop=0.1)
    save = tmp_path / "summary.md"
    assert cli.main(["summarize", run, "--save", str(save)]) == 0
    assert save.read_text() == capsys.readouterr().out.rstrip("\n") + "\n"
    assert json.loads((tmp_path / "summary.md.json").read_text())["groups"]
    with pytest.raises(SystemExit) as info:
        cli.main(["summarize", str(tmp_path / "missing")])
    assert info.value.code == 2
    assert "is not an evaluated run folder" in capsys.readouterr().err


def _relative(clean, clutter, quarter):
    return {"clean_accuracy": clean, "clutter": {"accuracy": clutter},
            "box_part": {"fractions": [0.1, 0.25], "accuracy": [1.0, quarter]},
            "whole_box": {"accuracy": 0.1}}


def test_localisation_and_occlusion_targets_by_hand(tmp_path):
    runs = []
    for seed, (keep_pxap, ersm_quarter) in enumerate(((0.7, 0.85),
                                                      (0.55, 0.7))):
        folder = tmp_path / f"r{seed}"
        write_run(folder, seed, ersm_accuracy=0.95, drop=0.1)
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["pxap"] = {"ersm_keep": {"pxap": keep_pxap},
                           "magnitude_ersm": {"pxap": 0.6},
                           "gradcam_baseline": {"pxap": 0.3}}
        # Clean 0.9 -> clutter mean 0.6 (baseline), 1.0 -> 0.9 (ERSM).
        metrics["object_relative_occlusion"] = {"test": {
            "baseline": _relative(0.9, [0.7, 0.5], 0.9),
            "ersm": _relative(1.0, [0.95, 0.85], ersm_quarter)}}
        metrics["object_tokens"] = {"object_tokens_kept": 0.3 + 0.4 * seed,
                                    "kept_on_object": 0.9}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        runs.append(str(folder))
    group = summary.summarize_runs(runs)["groups"][0]
    targets = group["targets"]
    pxap = targets["PxAP of the keep probabilities above magnitude's and "
                   "Grad-CAM's, every seed"]
    assert pxap["values"] == pytest.approx([0.1, -0.05])
    assert pxap["per_seed"] == [True, False] and pxap["met"] is False
    clutter = targets["(a) test, clutter off the object's box: ERSM loses no "
                      "more than the baseline"]
    assert clutter["values"] == pytest.approx([0.2, 0.2])
    assert clutter["met"] is True
    quarter = targets["(b) test, a quarter of the object's box hidden: ERSM "
                      "keeps at least 85% of its clean accuracy"]
    assert quarter["values"] == pytest.approx([0.85, 0.7])
    assert quarter["met"] is False  # mean 0.775
    # Coverage: mean 0.5 < 0.6; precision 0.9 >= 0.85.
    assert targets["coverage: at least 60% of the object's tokens kept"][
        "met"] is False
    assert targets["precision: at least 85% of kept tokens on the object"][
        "met"] is True
    measurements = group["measurements"]
    assert measurements["test, (b) a quarter of the object's box hidden, "
                        "accuracy: ERSM"]["mean"] == pytest.approx(0.775)
    assert "test_shuffled, (c) the whole box hidden, accuracy: ERSM" not in (
        measurements)
    assert targets["IoU at the validation threshold: keep probabilities "
                   "above magnitude and Grad-CAM, every seed"]["met"] is None


def test_a_measurement_some_seeds_lack_says_how_many_have_it(tmp_path):
    # A run evaluated before a measurement existed: its mean and std come
    # from the others alone, which the table must say.
    runs = [write_run(tmp_path / f"a{seed}", seed, ersm_accuracy=0.9,
                      drop=0.1) for seed in (0, 1)]
    metrics_path = tmp_path / "a1" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["pxap"] = {"ersm_keep": {"pxap": 0.6},
                       "magnitude_ersm": {"pxap": 0.7},
                       "gradcam_baseline": {"pxap": 0.3}}
    metrics_path.write_text(json.dumps(metrics))
    table = summary.summary_markdown(summary.summarize_runs(runs))
    assert "| ERSM accuracy | 0.900 ± 0.000 |" in table
    pxap = [line for line in table.splitlines()
            if line.startswith("| PxAP: ERSM")]
    assert pxap == ["| PxAP: ERSM keep probabilities | 0.600 ± 0.000 "
                    "(1 of 2 seeds) |"], table
