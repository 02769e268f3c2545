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
