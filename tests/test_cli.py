"""The `ersm` command line: the quick demo end to end, train / evaluate /
export on a tiny run, resume, and argument errors."""

import hashlib
import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ersm
from keras_ersm import cli
from keras_ersm import experiment
from keras_ersm.experiment import run_folder
from keras_ersm.experiment import training
from keras_ersm import report

from training_stubs import NoFit
from training_stubs import OneBatch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# With the default --weights benchmark, pre-training comes first.
TRAIN_PHASES = ["Pre-training the backbone (cached after the first run)",
                "Building the data", "Training the baseline",
                "Training the ERSM model"]
EVALUATION_PHASES = [
    "Measuring accuracy (baseline, then ERSM)",
    "Measuring sparsity (ERSM)",
    "Measuring deletion, least important first (areas of the learned, "
    "magnitude, random and Grad-CAM rankings)",
    "Measuring deletion, most important first (areas of the learned, "
    "magnitude, random and Grad-CAM rankings)",
    "Measuring occlusion by grey squares (baseline, then ERSM)",
    "Measuring occlusion of the object's box (baseline, then ERSM)",
    "Measuring where the kept tokens fall (ERSM)",
    "Measuring localisation (ERSM mask, baseline Grad-CAM, feature "
    "magnitude, whole image)",
    "Measuring PxAP and IoU at a threshold chosen on the validation split "
    "(ERSM keep probabilities, feature magnitude, baseline Grad-CAM)",
    "Measuring occlusion off, over part of and over the whole object (test, "
    "test_shuffled; baseline, then ERSM)",
    "Measuring background reliance (test, then test_shuffled; baseline, "
    "then ERSM)",
    "Writing the report",
]
DEMO_PHASES = (TRAIN_PHASES + ["Exporting the ERSM model"]
               + EVALUATION_PHASES)
TINY = [
    "--dataset", "ersm_benchmark", "--image-size", "32", "--batch-size",
    "16", "--epochs", "1", "--train-examples", "64", "--test-examples",
    "32", "--deletion-steps", "4",
]


def run_ersm(*args, timeout=600):
    """`ersm args` as the installed command runs, in this checkout."""
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-m", "keras_ersm_launcher", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def assert_clean_console(result, phases):
    """`ersm`'s output: the phases `[k/n]` in order, each begun and ended,
    no carriage returns or colour codes (the output is not a terminal),
    and nothing on standard error: no TensorFlow log line, no warning."""
    assert result.stderr == "", result.stderr[-3000:]
    assert "\r" not in result.stdout and "\x1b" not in result.stdout
    lines = result.stdout.splitlines()
    for index, name in enumerate(phases, 1):
        position = f"[{index}/{len(phases)}] {name}"
        assert lines.count(position) == 1, (position, result.stdout)
        ended = [line for line in lines
                 if line.startswith(position + ": ")]
        assert len(ended) == 1 and ended[0].endswith(" in all)"), ended
    assert not any(line.startswith(f"[{len(phases) + 1}/")
                   for line in lines)


def usage_error(argv, capsys):
    """The one error line of `ersm argv`, which must exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines()
              if "error:" in line]
    assert len(errors) == 1, errors
    return errors[0].split("error: ", 1)[1]


def assert_metrics_schema(metrics):
    assert metrics["schema_version"] == report.METRICS_VERSION
    for key in ("accuracy", "sparsity", "deletion", "occlusion",
                "localization", "object_occlusion", "background", "claims",
                "training", "config", "mask_layers", "runtime_seconds",
                "pxap", "validated_localization",
                "object_relative_occlusion"):
        assert key in metrics, key
    measured = [
        *metrics["accuracy"].values(), metrics["sparsity"],
        *metrics["deletion"].values(), *metrics["occlusion"].values(),
        *metrics["localization"].values(), *metrics["background"].values(),
        *metrics["object_occlusion"].values(), *metrics["pxap"].values(),
        *metrics["validated_localization"].values(),
        *(result for split in metrics["object_relative_occlusion"].values()
          for result in split.values()),
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
        "supported", "not supported", "not measured", "inconclusive"
    }
    chance = metrics["accuracy"]["baseline"]["chance_accuracy"]
    assert chance == 1 / experiment.NUM_CLASSES[metrics["config"]["dataset"]]
    assert len(metrics["claims"]) == 6


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    output = tmp_path / "demo"
    result = run_ersm("demo", "--quick", "--output", str(output),
                      "--tensorboard", str(tmp_path / "logs"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_clean_console(result, DEMO_PHASES)
    for name in ("report.md", "report.html", "metrics.json", "config.json",
                 "deletion.png", "occlusion.png", "masks.png",
                 "keep_histogram.png", "baseline.keras", "ersm.keras",
                 "saved_model/saved_model.pb"):
        assert (output / name).exists(), name
    with open(output / "metrics.json") as file:
        metrics = json.load(file)
    assert_metrics_schema(metrics)
    markdown = (output / "report.md").read_text()
    for figure in ("deletion.png", "occlusion.png", "masks.png",
                   "keep_histogram.png"):
        assert f"]({figure})" in markdown
    assert "<table>" in (output / "report.html").read_text()
    summary = result.stdout.split("claim by claim:")[1]
    assert summary.count("\n  [") == 6
    # The default's mask is not uniform: it keeps some tokens of every
    # image, not all, and how many depends on the image (measured: 0.73 kept,
    # std / mean 0.09; at 32x32 every token sees the whole image, so it
    # cannot localise: tests/test_mask_learns.py tests that at 64x64).
    kept = metrics["object_tokens"]["kept_fraction"]
    assert 0.05 < kept["mean"] < 0.95 and kept["relative_std"] > 0.05
    assert metrics["object_tokens"]["empty_images"] < 0.05
    # TensorBoard: both trainings, and the ERSM model's masks.
    assert os.listdir(tmp_path / "logs" / "baseline" / "train")
    masks = tmp_path / "logs" / "ersm" / "masks"
    tags = set()
    for path in masks.iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags |= {(event.step, value.tag) for value in event.summary.value}
    assert (0, "energy_mask/overlay") in tags
    assert (0, "energy_mask/kept_fraction") in tags
    # The serving input is named, not counted.
    served = tf.saved_model.load(str(output / "saved_model"))
    _, inputs = served.signatures["serving_default"].structured_input_signature
    assert list(inputs) == ["images"]


@pytest.mark.slow
def test_train_evaluate_export_and_resume(tmp_path):
    output = str(tmp_path / "run")
    trained = run_ersm("train", *TINY, "--preset", "reference",
                       "--formulation", "coherent", "--output", output)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert_clean_console(trained, TRAIN_PHASES)
    config = experiment.load_config(output)
    assert config.mask.formulation == "coherent" and config.image_size == 32

    # Resuming a finished run keeps its models as they were saved.
    saved = {name: os.path.join(output, name)
             for name in ("baseline.keras", "ersm.keras")}
    before = {name: _file_state(path) for name, path in saved.items()}
    again = run_ersm("train", *TINY, "--preset", "reference",
                     "--formulation", "coherent", "--output", output,
                     "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert {name: _file_state(path) for name, path in saved.items()} == (
        before)
    changed = run_ersm("train", *TINY, "--preset", "reference", "--output",
                       output, "--resume")
    assert changed.returncode != 0
    assert ("options differ from those of the run in "
            f"{output} (formulation: 'coherent' in the run, 'reference' "
            "now)") in changed.stderr

    evaluated = run_ersm("evaluate", "--output", output)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert_clean_console(evaluated, ["Loading the run (models and data)"]
                         + EVALUATION_PHASES)
    with open(os.path.join(output, "metrics.json")) as file:
        metrics = json.load(file)
    assert_metrics_schema(metrics)
    assert metrics["config"]["formulation"] == "coherent"

    exported = run_ersm("export", "--output", output, "--path",
                        str(tmp_path / "served"), "--quiet")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert exported.stdout == json.dumps(
        {"saved_model": str(tmp_path / "served")}) + "\n"
    assert (tmp_path / "served" / "saved_model.pb").exists()


def _file_state(path):
    with open(path, "rb") as file:
        digest = hashlib.sha256(file.read()).hexdigest()
    return digest, os.stat(path).st_mtime_ns


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
    run_folder.discard_unusable_first_backup(str(backup))
    assert not backup.exists()

    os.makedirs(backup)
    with h5py.File(weights, "w") as file:
        file["w"] = np.zeros(2)
    run_folder.discard_unusable_first_backup(str(backup))
    assert not backup.exists(), "weights without their epoch are unusable"

    os.makedirs(backup)
    with h5py.File(weights, "w") as file:
        file["w"] = np.zeros(2)
    (backup / "training_metadata.json").write_text('{"epoch": 0}')
    run_folder.discard_unusable_first_backup(str(backup))
    assert weights.exists()


def test_interrupted_model_needs_resume(tmp_path):
    config = experiment.quick_config()
    os.makedirs(tmp_path / "backup_ersm")
    with pytest.raises(experiment.RunFolderError, match="--resume"):
        experiment.train(
            NoFit(name="ersm"), {"train": OneBatch()}, config,
            str(tmp_path),
        )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--output", "x", "--backbone", "ResNet51"],
         "unknown backbone 'ResNet51'; choose from: BenchmarkConvNet, "
         "ConvNeXtTiny"),
        (["train", "--output", "x", "--dataset", "imagenet"],
         "unknown dataset 'imagenet'; choose from: ersm_benchmark"),
        (["demo", "--preset", "paper"], "invalid choice: 'paper'"),
        (["train", "--output", "x", "--gate", "l0"], "invalid choice: 'l0'"),
    ],
)
def test_bad_arguments_exit_2_with_the_valid_choices(args, expected, capsys):
    assert expected in usage_error(args, capsys)


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


def test_every_train_option_reaches_the_config():
    args = cli.build_parser().parse_args([
        "train", "--output", "run", "--preset", "scratch", "--dataset",
        "oxford_iiit_pet",
        "--backbone", "resnet50", "--feature-layer", "conv3_block4_out",
        "--weights", "imagenet", "--freeze-backbone", "--image-size", "96",
        "--pretrain-epochs", "2", "--pretrain-examples", "30",
        "--batch-size", "16", "--epochs", "3", "--train-examples", "100",
        "--test-examples", "50", "--learning-rate", "0.01",
        "--weight-decay", "0.05", "--formulation", "coherent",
        "--gate", "sigmoid", "--output-scaling", "mask_mass",
        "--initial-keep", "0.8", "--authors-dynamics", "--patch-size", "2",
        "--unary-weight",
        "0.1", "--pairwise-weight", "0.2", "--energy-loss-weight", "0.5",
        "--temperature", "2", "--coupling", "0.7", "--mean-field-steps",
        "5", "--damping", "0.5", "--neighbour-weights", "affinity",
        "--mask-mass-epsilon", "0.05", "--deletion-steps", "10",
        "--seed", "7",
    ])
    default = experiment.ExperimentConfig.from_preset("scratch")
    config = cli._config_from(args, experiment)
    expected = {
        "dataset": "oxford_iiit_pet",
        "backbone": "ResNet50",
        "feature_layer": "conv3_block4_out",
        "weights": "imagenet",
        "freeze_backbone": True,
        "pretrain_epochs": 2,
        "pretrain_examples": 30,
        "image_size": 96,
        "batch_size": 16,
        "epochs": 3,
        "train_examples": 100,
        "test_examples": 50,
        "learning_rate": 0.01,
        "weight_decay": 0.05,
        "formulation": "coherent",
        "gate": "sigmoid",
        "output_scaling": "mask_mass",
        "initial_keep": 0.8,
        "authors_dynamics": True,
        "patch_size": 2,
        "unary_weight": 0.1,
        "pairwise_weight": 0.2,
        "energy_loss_weight": 0.5,
        "temperature": 2.0,
        "coupling": 0.7,
        "mean_field_steps": 5,
        "damping": 0.5,
        "neighbour_weights": "affinity",
        "mask_mass_epsilon": 0.05,
        "deletion_steps": 10,
        "seed": 7,
        # Not command-line options.
        "occlusion_fractions": default.occlusion_fractions,
        "num_examples_shown": default.num_examples_shown,
    }
    assert config.to_dict() == {
        **expected, "occlusion_fractions": list(default.occlusion_fractions)}
    # Every option was given a value other than its default.
    default_values = default.to_dict()
    for field, value in expected.items():
        if field not in ("occlusion_fractions", "num_examples_shown", "gate"):
            assert default_values[field] != value, field
    none = cli.build_parser().parse_args(
        ["train", "--output", "run", "--preset", "scratch", "--feature-layer",
         "None", "--weights", "none", "--no-freeze-backbone"])
    config = cli._config_from(none, experiment)
    assert (config.feature_layer, config.weights, config.freeze_backbone) == (
        None, None, False)
    # Options not given keep the preset's values.
    for preset in experiment.PRESETS:
        args = cli.build_parser().parse_args(
            ["train", "--output", "run", "--preset", preset])
        assert cli._config_from(args, experiment) == (
            experiment.ExperimentConfig.from_preset(preset))


@pytest.mark.parametrize(
    "options, expected",
    [
        (["--epochs", "-3"], "ExperimentConfig: argument `epochs` must be "
         "an integer >= 1; received -3."),
        (["--initial-keep", "1.0"], "ExperimentConfig: argument "
         "`initial_keep` must be a number in (0, 1); received 1.0."),
        (["--weights", "imagenett"], "argument `weights` must be None, "
         "'imagenet', 'benchmark' or the path of a weights file (.h5); "
         "received 'imagenett'."),
        (["--weights", "missing.weights.h5"], "argument `weights` names no "
         "file: 'missing.weights.h5'."),
        (["--image-size", "0"], "argument `image_size` must be an integer "
         ">= 32; received 0."),
        (["--preset", "scratch", "--backbone", "resnet50"], "argument "
         "`feature_layer` must be None or a layer of ResNet50; received "
         "'block_6_expand_relu'. Pass feature_layer=None "
         "(`--feature-layer none`)"),
        (["--backbone", "resnet50"], "argument `weights` must be 'benchmark' "
         "only with backbone 'BenchmarkConvNet'"),
    ],
)
def test_invalid_train_options_exit_2_before_writing(options, expected,
                                                     tmp_path, capsys):
    output = tmp_path / "run"
    assert expected in usage_error(
        ["train", "--output", str(output), *options], capsys)
    assert not output.exists()


def test_help_names_the_presets_and_their_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--preset {learned,reference,authors,scratch}" in text
    assert "'reference' (the authors' energy on that backbone)" in text
    assert ("--formulation {reference,coherent,keeping_cost} the energy: the "
            "authors' \"reference\", \"coherent\" or \"keeping_cost\" "
            "(default: keeping_cost)") in text
    assert ("--mask-mass-epsilon MASK_MASS_EPSILON eps of \"mask_mass\": the "
            "default pools the mean of the kept tokens, larger values move "
            "towards their sum; a number > 0 (default: 0.001)") in text


@pytest.mark.parametrize("quick", [True, False])
def test_demo_resume_reaches_run_experiment(quick, tmp_path, monkeypatch):
    calls = []

    def run_experiment(config, output_dir, *, resume=False, **kwargs):
        calls.append((config, output_dir, resume))
        return {"claims": []}

    monkeypatch.setattr(experiment, "run_experiment", run_experiment)
    output = str(tmp_path / "demo")
    flags = ["--quick"] if quick else []
    for resume in (False, True):
        assert cli.main(["demo", *flags, "--preset", "reference",
                         "--output", output]
                        + (["--resume"] if resume else [])) == 0
    config = (experiment.quick_config("reference") if quick
              else experiment.ExperimentConfig.from_preset("reference"))
    assert calls == [(config, output, False), (config, output, True)]


@pytest.mark.parametrize("command", ["demo", "train"])
def test_resume_without_a_run_says_to_start_one(command, tmp_path, capsys):
    output = str(tmp_path / "empty")
    assert usage_error([command, "--resume", "--output", output], capsys) == (
        f"resume: {output} holds no run to resume (no config.json); start "
        "the run without `--resume`."
    )
    assert not os.path.exists(output)


@pytest.mark.parametrize("command", ["demo", "train"])
def test_an_output_path_that_is_a_file_is_a_usage_error(command, tmp_path,
                                                        capsys):
    output = tmp_path / "taken"
    output.write_text("not a run")
    assert usage_error([command, "--output", str(output)], capsys) == (
        f"{output} is a file, not a folder: choose another output folder.")
    assert output.read_text() == "not a run"


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_a_folder_without_a_run_is_a_usage_error(command, tmp_path, capsys):
    output = tmp_path / "empty"
    message = usage_error([command, "--output", str(output)], capsys)
    assert message.startswith(str(output))
    assert f"run `ersm train --output {output}` first" in message or (
        f"train the run first with `ersm train --output {output}`"
        in message)
    assert not output.exists()


def test_demo_resume_with_other_options_lists_them(tmp_path, capsys):
    output = str(tmp_path / "demo")
    experiment.save_config(experiment.quick_config(), output)
    # Resuming a --quick demo without --quick.
    message = usage_error(["demo", "--resume", "--output", output], capsys)
    assert message.startswith(
        f"resume: the options differ from those of the run in {output} (")
    for difference in (
        "image_size: 32 in the run, 64 now",
        "train_examples: 2000 in the run, None now",
        "occlusion_fractions: [0.2, 0.5] in the run, "
        "[0.1, 0.2, 0.3, 0.4, 0.5] now",
        "num_examples_shown: 4 in the run, 6 now",
    ):
        assert difference in message
    assert "formulation" not in message


@pytest.mark.parametrize("command", ["demo", "train"])
def test_an_output_folder_that_cannot_be_made_is_a_usage_error(
        command, tmp_path, capsys, monkeypatch):
    def unreachable(config):
        raise AssertionError("the data was loaded")

    monkeypatch.setattr(training, "load_data", unreachable)
    taken = tmp_path / "taken"
    taken.write_text("not a run")
    output = taken / "run"
    assert usage_error([command, "--output", str(output)], capsys) == (
        f"{output} cannot be used as the output folder (Not a directory): "
        "choose another folder.")
    assert usage_error([command, "--output", ""], capsys) == (
        "The output folder is an empty path: name a folder.")


def test_an_export_path_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    inputs = keras.Input((8, 8, 3))
    masked = keras_ersm.EnergyMask()(keras.layers.Conv2D(4, 1)(inputs))
    keras.Model(inputs, masked, name="ersm").save(tmp_path / "ersm.keras")
    taken = tmp_path / "taken"
    taken.write_text("not a model")
    assert usage_error(["export", "--output", str(tmp_path), "--path",
                        str(taken)], capsys) == (
        f"{taken} is a file, not a folder: choose another SavedModel "
        "folder.")
    assert taken.read_text() == "not a model"
    under_a_file = taken / "served"
    assert usage_error(["export", "--output", str(tmp_path), "--path",
                        str(under_a_file)], capsys) == (
        f"{under_a_file} cannot be used as the SavedModel folder (Not a "
        "directory): choose another folder.")


@pytest.mark.parametrize("command", ["demo", "train"])
@pytest.mark.parametrize("result", experiment.RESULT_FILES)
def test_a_new_run_into_a_folder_with_results_is_a_usage_error(
        command, result, tmp_path, capsys):
    output = tmp_path / "run"
    experiment.save_config(experiment.quick_config(), str(output))
    (output / result).write_text("kept")
    assert usage_error([command, "--output", str(output)], capsys) == (
        f"{output} holds the results of a run ({result}): resume it "
        "(`--resume` with the run's options; resume=True in Python) to keep "
        "and complete that run, or choose another output folder (or delete "
        "this one).")
    assert (output / result).read_text() == "kept"
    # Without a config.json there is no run to resume.
    (output / "config.json").unlink()
    assert usage_error([command, "--output", str(output)], capsys) == (
        f"{output} holds the results of a run ({result}): choose another "
        "output folder (or delete this one).")


@pytest.mark.parametrize("content, reason", [
    (None, "Is a directory"),
    ("{not json", "Expecting property name enclosed in double quotes"),
    ("[1, 2]", "a JSON list, not an object"),
    ('{"colour": "red"}', "unexpected keyword argument 'colour'"),
    ('{"epochs": 0}', "argument `epochs` must be an integer >= 1"),
])
@pytest.mark.parametrize("command", [["evaluate"], ["train", "--resume"]])
def test_a_broken_run_config_is_a_usage_error(command, content, reason,
                                               tmp_path, capsys):
    if content is None:
        (tmp_path / "config.json").mkdir()
    else:
        (tmp_path / "config.json").write_text(content)
    message = usage_error([*command, "--output", str(tmp_path)], capsys)
    assert message.startswith(
        f"{tmp_path / 'config.json'} is not the config of a run (")
    assert reason in message
    assert message.endswith("it is written by `ersm train`: restore it, or "
                            "train into another folder.")


def test_usage_errors_print_the_subcommands_usage(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--output", str(tmp_path), "--epochs", "0"])
    err = capsys.readouterr().err
    assert err.startswith("usage: ersm train ")
    assert "ersm train: error: ExperimentConfig: argument `epochs`" in err


def test_unavailable_data_or_weights_exit_1_with_the_message_alone(
        tmp_path, capsys, monkeypatch):
    from keras_ersm.backbones import WeightsDownloadError
    from keras_ersm.datasets import DatasetUnavailableError

    for error in (DatasetUnavailableError("prepare it elsewhere"),
                  WeightsDownloadError("copy the weights here")):
        def offline(config, error=error):
            raise error

        monkeypatch.setattr(training, "load_data", offline)
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["train", "--output", str(tmp_path / "run")])
        assert exit_info.value.code == 1
        assert capsys.readouterr().err == f"ersm train: error: {error}\n"


@pytest.mark.parametrize("dataset, weights, training, evaluation_phases", [
    # Pre-training first; object masks and test_shuffled.
    ("ersm_benchmark", "benchmark", 4, 12),
    ("ersm_benchmark", None, 3, 12),
    ("oxford_iiit_pet", None, 3, 11),  # object masks
    ("cifar10", None, 3, 6),
])
def test_each_command_counts_its_phases(dataset, weights, training,
                                        evaluation_phases):
    config = experiment.ExperimentConfig(dataset=dataset, weights=weights)
    assert experiment.count_phases(config, "train") == training
    assert experiment.count_phases(config, "evaluate") == (
        1 + evaluation_phases)
    assert experiment.count_phases(config, "demo") == (
        training + 1 + evaluation_phases)
    assert len(DEMO_PHASES) == experiment.count_phases(
        experiment.quick_config(), "demo")
    with pytest.raises(ValueError, match="count_phases: argument `command` "
                       "must be one of"):
        experiment.count_phases(config, "export")


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_demo_prints_only_the_claims(quiet, tmp_path, monkeypatch,
                                           capsys):
    received = {}

    def run_experiment(config, output_dir, **kwargs):
        received.update(kwargs)
        return {"claims": [{"verdict": "inconclusive", "claim": "c",
                            "evidence": "e"}]}

    monkeypatch.setattr(experiment, "run_experiment", run_experiment)
    output = str(tmp_path / "demo")
    assert cli.main(["demo", "--quick", "--output", output]
                    + (["--quiet"] if quiet else [])) == 0
    claims = "\nERSM vs baseline, claim by claim:\n  [inconclusive] c: e\n"
    report = f"\nReport: {os.path.join(output, 'report.md')}\n"
    assert capsys.readouterr().out == claims + ("" if quiet else report)
    phases = received["phases"]
    assert phases.total == len(DEMO_PHASES) and phases.quiet == quiet
    # Not a terminal: one line per epoch, no bar redrawn in place.
    assert received["verbose"] == phases.verbose == (0 if quiet else 2)
    assert received["tensorboard"] is None


def test_tensorboard_without_the_package_is_a_usage_error(
        tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *args: None if name == "tensorboard"
        else find_spec(name, *args))
    output = tmp_path / "run"
    assert usage_error(["train", "--output", str(output), "--tensorboard",
                        str(tmp_path / "logs")], capsys) == (
        "--tensorboard needs the tensorboard package: pip install "
        "tensorboard (or keras-ersm[tensorboard]).")
    assert not output.exists()


def test_help_leaves_the_console_clean():
    result = run_ersm("train", "--help", timeout=120)
    assert result.returncode == 0
    assert "--tensorboard DIR" in result.stdout and "--quiet" in (
        result.stdout)
    assert result.stderr == ""
