"""The `ersm` command line: the quick demo end to end, train / evaluate /
export on a tiny run, resume, and argument errors."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from keras_ersm import cli
from keras_ersm import experiment
from keras_ersm import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--dataset", "ersm_benchmark", "--image-size", "32", "--batch-size",
    "16", "--epochs", "1", "--train-examples", "64", "--test-examples",
    "32", "--deletion-steps", "4",
]


def run_ersm(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "keras_ersm.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def assert_metrics_schema(metrics):
    assert metrics["schema_version"] == report.METRICS_VERSION
    for key in ("accuracy", "sparsity", "deletion", "occlusion",
                "localization", "object_occlusion", "background", "claims",
                "training", "config", "mask_layers", "runtime_seconds"):
        assert key in metrics, key
    measured = [
        *metrics["accuracy"].values(), metrics["sparsity"],
        *metrics["deletion"].values(), *metrics["occlusion"].values(),
        *metrics["localization"].values(), *metrics["background"].values(),
        *metrics["object_occlusion"].values(),
    ]
    for block in measured:
        assert {"split", "seed"} <= set(block), block.keys()
        assert "num_images" in block
    least = metrics["deletion"]["least_important_first"]
    assert least["higher_is_better"] is True
    assert set(least["curves"]) == {"learned", "magnitude", "random",
                                    "gradcam"}
    for curve in least["curves"].values():
        assert 0.0 <= curve["area"] <= 1.0
        assert curve["fractions"][0] == 0.0 and curve["fractions"][-1] == 1.0
    assert not metrics["deletion"]["most_important_first"]["higher_is_better"]
    assert {c["verdict"] for c in metrics["claims"]} <= {
        "supported", "not supported", "not measured"
    }
    assert len(metrics["claims"]) == 6


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    output = tmp_path / "demo"
    result = run_ersm("demo", "--quick", "--output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("report.md", "report.html", "metrics.json", "config.json",
                 "deletion.png", "occlusion.png", "masks.png",
                 "keep_histogram.png", "baseline.keras", "ersm.keras",
                 "saved_model/saved_model.pb"):
        assert (output / name).exists(), name
    with open(output / "metrics.json") as file:
        assert_metrics_schema(json.load(file))
    markdown = (output / "report.md").read_text()
    for figure in ("deletion.png", "occlusion.png", "masks.png",
                   "keep_histogram.png"):
        assert f"]({figure})" in markdown
    assert "<table>" in (output / "report.html").read_text()
    summary = result.stdout.split("claim by claim:")[1]
    assert summary.count("\n  [") == 6


@pytest.mark.slow
def test_train_evaluate_export_and_resume(tmp_path):
    output = str(tmp_path / "run")
    trained = run_ersm("train", *TINY, "--formulation", "coherent",
                       "--output", output)
    assert trained.returncode == 0, trained.stderr[-3000:]
    config = experiment.load_config(output)
    assert config.formulation == "coherent" and config.image_size == 32

    # Training again into the same folder without --resume keeps the run.
    again = run_ersm("train", *TINY, "--formulation", "coherent",
                     "--output", output, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    changed = run_ersm("train", *TINY, "--output", output, "--resume")
    assert changed.returncode != 0
    assert "options differ" in changed.stderr

    evaluated = run_ersm("evaluate", "--output", output)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    with open(os.path.join(output, "metrics.json")) as file:
        metrics = json.load(file)
    assert_metrics_schema(metrics)
    assert metrics["config"]["formulation"] == "coherent"

    exported = run_ersm("export", "--output", output, "--path",
                        str(tmp_path / "served"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (tmp_path / "served" / "saved_model.pb").exists()


@pytest.mark.slow
def test_killed_training_resumes_where_it_stopped(tmp_path):
    output = tmp_path / "run"
    args = ["train", "--dataset", "ersm_benchmark", "--image-size", "32",
            "--batch-size", "16", "--epochs", "3", "--train-examples", "256",
            "--test-examples", "32", "--output", str(output)]
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_ersm.cli", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    backup = output / "backup_baseline"
    try:
        # Kill it as soon as the first epoch's backup is written.
        for _ in range(3000):
            if backup.exists() and any(backup.iterdir()):
                break
            if process.poll() is not None:
                pytest.fail("training ended before it could be killed")
            time.sleep(0.1)
        else:
            pytest.fail("no backup within 300 s")
    finally:
        process.kill()
        process.wait()
    assert not (output / "baseline.keras").exists()

    resumed = run_ersm(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not backup.exists()  # removed once training completed
    for name in ("baseline", "ersm"):
        history = experiment.read_history(str(output), name)
        assert len(history["loss"]) == 3, (name, history)
    # The resumed run did not start again from epoch 0.
    lines = (output / "history_baseline.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1", "2"]


def test_a_cut_off_first_backup_is_discarded_not_resumed(tmp_path):
    import h5py

    backup = tmp_path / "backup_ersm"
    os.makedirs(backup)
    weights = backup / "latest.weights.h5"
    weights.write_bytes(b"\x89HDF\r\n")  # a kill mid-write
    experiment._discard_unusable_first_backup(str(backup))
    assert not backup.exists()

    os.makedirs(backup)
    with h5py.File(weights, "w") as file:
        file["w"] = np.zeros(2)
    experiment._discard_unusable_first_backup(str(backup))
    assert not backup.exists(), "weights without their epoch are unusable"

    os.makedirs(backup)
    with h5py.File(weights, "w") as file:
        file["w"] = np.zeros(2)
    (backup / "training_metadata.json").write_text('{"epoch": 0}')
    experiment._discard_unusable_first_backup(str(backup))
    assert weights.exists()


def test_interrupted_model_needs_resume(tmp_path):
    config = experiment.quick_config()
    os.makedirs(tmp_path / "backup_ersm")
    with pytest.raises(FileExistsError, match="--resume"):
        experiment.train(
            _NoFit(name="ersm"), {"train": _OneBatch()}, config,
            str(tmp_path),
        )


class _OneBatch:
    def cardinality(self):
        return 1


class _NoFit:
    def __init__(self, name):
        self.name = name

    def compile(self, **kwargs):
        pass


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--output", "x", "--backbone", "ResNet51"],
         "unknown backbone 'ResNet51'; choose from: ConvNeXtTiny"),
        (["train", "--output", "x", "--dataset", "imagenet"],
         "unknown dataset 'imagenet'; choose from: ersm_benchmark"),
        (["demo", "--formulation", "paper"], "invalid choice: 'paper'"),
    ],
)
def test_bad_arguments_exit_2_with_the_valid_choices(args, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines()
              if "error:" in line]
    assert len(errors) == 1 and expected in errors[0]


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for field in experiment.ExperimentConfig.__dataclass_fields__:
        if field in ("occlusion_fractions", "num_examples_shown"):
            continue
        assert "--" + field.replace("_", "-") in text, field
    assert "--resume" in text and "(default:" in text


def test_backbone_names_are_case_insensitive():
    args = cli.build_parser().parse_args(
        ["train", "--output", "x", "--backbone", "resnet50"]
    )
    assert args.backbone == "ResNet50"
