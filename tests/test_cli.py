"""The `ersm` command line: the quick demo end to end, train / evaluate /
export on a tiny run, resume, and argument errors."""

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_ersm
from keras_ersm import cli
from keras_ersm import experiment
from keras_ersm.experiment import data as experiment_data
from keras_ersm.experiment import run_folder
from keras_ersm.experiment import training
from keras_ersm.experiment.phases import BENCHMARK_PHASE
from keras_ersm import report

from offline_fakes import forbid_network
from offline_fakes import prepare_fake_pets
from offline_fakes import serve_fake_imagenet_weights
from training_stubs import NoFit
from training_stubs import OneBatch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# With the default --weights benchmark, pre-training comes first; before it,
# on a first run, building the offline benchmark (BENCHMARK_PHASE).
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


def run_ersm(*args, timeout=600, **environment):
    """`ersm args` as the installed command runs, in this checkout, with
    the variables `environment` added to the environment."""
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.update(environment)
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


def assert_metrics_schema(metrics, benchmark=True):
    """The keys and blocks of `metrics.json`; the background-reliance
    block and claim are the ERSM benchmark's alone (`benchmark`)."""
    assert metrics["schema_version"] == report.METRICS_VERSION
    for key in ("accuracy", "sparsity", "deletion", "occlusion",
                "localization", "object_occlusion", "object_tokens",
                "claims", "training", "config", "mask_layers",
                "runtime_seconds", "pxap", "validated_localization",
                "object_relative_occlusion"):
        assert key in metrics, key
    assert ("background" in metrics) == benchmark
    measured = [
        *metrics["accuracy"].values(), metrics["sparsity"],
        *metrics["deletion"].values(), *metrics["occlusion"].values(),
        *metrics["localization"].values(),
        *metrics.get("background", {}).values(),
        *metrics["object_occlusion"].values(), metrics["object_tokens"],
        *metrics["pxap"].values(), *metrics["validated_localization"].values(),
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
    assert len(metrics["claims"]) == (6 if benchmark else 5)


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    # A first run: nothing rendered or pre-trained yet.
    output = tmp_path / "demo"
    result = run_ersm("demo", "--quick", "--output", str(output),
                      "--tensorboard", str(tmp_path / "logs"),
                      KERAS_ERSM_CACHE=str(tmp_path / "cache"),
                      TFDS_DATA_DIR=str(tmp_path / "tensorflow_datasets"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_clean_console(result, [BENCHMARK_PHASE] + DEMO_PHASES)
    # The benchmark is built first, in a phase of its own that says what
    # it renders; not with tfds's "Downloading and preparing dataset
    # Unknown size" inside the pre-training, nor TensorFlow's failed CUDA
    # probe ("failed call to cuInit") on a machine without a GPU.
    lines = result.stdout.splitlines()
    total = len(DEMO_PHASES) + 1
    assert lines[:2] == [
        f"[1/{total}] {BENCHMARK_PHASE}",
        "Rendering 5500 images of 32x32 (2000 train, 500 test, 500 "
        "test_shuffled, 2000 pretrain, 500 validation) from scikit-learn's "
        "digits and scikit-image's photos into "
        + str(tmp_path / "tensorflow_datasets" / "ersm_benchmark" / "32"
              / "1.3.0"),
    ], lines[:2]
    assert lines[2].startswith(f"[1/{total}] {BENCHMARK_PHASE}: ")
    assert lines[3] == f"[2/{total}] {TRAIN_PHASES[0]}"
    for text in ("Downloading and preparing", "cuInit"):
        assert text not in result.stdout + result.stderr, text
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
    # Built before (by another test, or an earlier run), or built now.
    first_run = [BENCHMARK_PHASE] * experiment_data.benchmark_to_build(
        experiment.ExperimentConfig(image_size=32))
    trained = run_ersm("train", *TINY, "--preset", "reference",
                       "--formulation", "coherent", "--output", output)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert_clean_console(trained, first_run + TRAIN_PHASES)
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

    # The benchmark is built now: no phase of building it.
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


def readme_pets_commands(output):
    """The README's commands for the paper's datasets ("Evaluation and the
    `ersm` command"), `ersm train`, `evaluate` and `export`, as arguments
    of `cli.main`, writing to `output`."""
    with open(os.path.join(REPO, "README.md")) as file:
        blocks = re.findall(r"```bash\n(.*?)```", file.read(), re.S)
    block = next(b for b in blocks if "ersm train --dataset " in b)
    commands = [shlex.split(line, comments=True)[1:]
                for line in block.replace("\\\n", " ").splitlines()
                if line.startswith("ersm ")]
    assert [c[0] for c in commands] == ["train", "evaluate", "export"]
    for command in commands:
        command[command.index("--output") + 1] = output
    return commands


PETS_TINY = ["--image-size", "32", "--batch-size", "4", "--train-examples",
             "8", "--test-examples", "8", "--epochs", "1",
             "--deletion-steps", "2"]


def _offline(monkeypatch, data_dir):
    """tfds reads `data_dir` as `TFDS_DATA_DIR` (which it reads once, when
    imported), and any network connection fails the test."""
    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", data_dir)
    forbid_network(monkeypatch)


@pytest.fixture(scope="module")
def pets_run(tmp_path_factory):
    """The README's pets command, `ersm train`, run offline at tiny sizes:
    a few pets prepared in a tfds data dir by tfds's own builder, and
    ImageNet weights served by a stand-in for `keras.utils.get_file` (see
    `serve_fake_imagenet_weights`).

    Returns:
        (run folder, data dir, the model whose weights were served as
        ImageNet's, the weight files requested).
    """
    tmp = tmp_path_factory.mktemp("pets")
    data_dir = str(tmp / "tensorflow_datasets")
    prepare_fake_pets(data_dir, num_train=8, num_test=8)
    output = str(tmp / "pets")
    train, _, _ = readme_pets_commands(output)
    with pytest.MonkeyPatch.context() as monkeypatch:
        weights, requested = serve_fake_imagenet_weights(monkeypatch,
                                                         str(tmp))
        _offline(monkeypatch, data_dir)
        # Later options win: the README's sizes give way to tiny ones.
        assert cli.main([*train, *PETS_TINY, "--quiet"]) == 0
    return output, data_dir, weights, requested


def test_readme_pets_command_trains_the_default_mask_offline(pets_run):
    output, _, weights, requested = pets_run
    # One file per model of the pair, ImageNet's for ResNet50 alone.
    assert requested == [
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"] * 2
    # The README's options, with tiny sizes.
    config = experiment.load_config(output)
    assert config == experiment.ExperimentConfig.from_preset(
        "learned", dataset="oxford_iiit_pet", backbone="ResNet50",
        weights="imagenet", freeze_backbone=True, feature_layer=None,
        image_size=32, batch_size=4, train_examples=8, test_examples=8,
        epochs=1, deletion_steps=2)
    ersm = keras.saving.load_model(os.path.join(output, "ersm.keras"))
    masks = [layer for layer in ersm.layers
             if isinstance(layer, keras_ersm.EnergyMask)]
    # The package's default mask, the one that learns.
    assert len(masks) == 1
    assert masks[0].options == experiment.ExperimentConfig().mask
    # The frozen backbone holds the weights served as ImageNet's.
    for name in ("conv1_conv", "conv5_block3_3_bn"):
        for trained, served in zip(ersm.get_layer(name).get_weights(),
                                   weights.get_layer(name).get_weights()):
            np.testing.assert_array_equal(trained, served)
    history = experiment.read_history(output, "ersm")
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])


@pytest.mark.slow
def test_readme_pets_run_evaluates_and_exports_offline(pets_run,
                                                       monkeypatch):
    output, data_dir, _, _ = pets_run
    _, evaluate, export = readme_pets_commands(output)
    _offline(monkeypatch, data_dir)
    assert cli.main([*evaluate, "--quiet"]) == 0
    with open(os.path.join(output, "metrics.json")) as file:
        metrics = json.load(file)
    # Measured on the pets' test split, with their object masks.
    assert_metrics_schema(metrics, benchmark=False)
    assert metrics["localization"]["ersm_mask"]["split"] == "test"
    assert metrics["localization"]["ersm_mask"]["num_images"] == 8
    assert cli.main([*export, "--quiet"]) == 0
    served = tf.saved_model.load(os.path.join(output, "saved_model"))
    assert set(served.signatures) == {"serving_default", "explain"}


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
    # Whole options only: "--epochs" must not be found in "--pretrain-epochs".
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*(?![\w-])", text))
    # The flat fields: each mask option is a flag of its own.
    for field in experiment.ExperimentConfig().to_dict():
        if field in ("occlusion_fractions", "num_examples_shown"):
            continue
        assert "--" + field.replace("_", "-") in options, field
    assert "--resume" in options and "(default:" in text


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
        "--weight-decay", "0.05", "--epoch-schedule",
        "--formulation", "coherent",
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
        "epoch_schedule": True,
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
        (["--dataset", "cifar10"], "argument `weights` must be 'benchmark' "
         "only on dataset 'ersm_benchmark' (dataset 'cifar10' given)"),
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
        # A dataset that is not the benchmark, from scratch: nothing to
        # render or pre-train before the data is loaded.
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["train", "--output", str(tmp_path / "run"),
                      "--dataset", "cifar10", "--weights", "none"])
        assert exit_info.value.code == 1
        assert capsys.readouterr().err == f"ersm train: error: {error}\n"


@pytest.fixture
def benchmark_built(monkeypatch):
    """The offline benchmark counts as built (True) or not (False)."""
    def set_built(built):
        monkeypatch.setattr(experiment_data, "benchmark_is_built",
                            lambda *args, **kwargs: built)

    set_built(True)
    return set_built


@pytest.mark.parametrize("dataset, weights, training, evaluation_phases", [
    # Pre-training first; object masks and test_shuffled.
    ("ersm_benchmark", "benchmark", 4, 12),
    ("ersm_benchmark", None, 3, 12),
    ("oxford_iiit_pet", None, 3, 11),  # object masks
    ("cifar10", None, 3, 6),
])
@pytest.mark.parametrize("built", [True, False])
def test_each_command_counts_its_phases(dataset, weights, training,
                                        evaluation_phases, built,
                                        benchmark_built):
    benchmark_built(built)
    # First, building the benchmark where it is not built (only the
    # benchmark's runs read it).
    first_run = int(dataset == "ersm_benchmark" and not built)
    config = experiment.ExperimentConfig(dataset=dataset, weights=weights)
    assert experiment.count_phases(config, "train") == first_run + training
    assert experiment.count_phases(config, "evaluate") == (
        first_run + 1 + evaluation_phases)
    assert experiment.count_phases(config, "demo") == (
        first_run + training + 1 + evaluation_phases)
    assert experiment.count_phases(experiment.quick_config(), "demo") == (
        len(DEMO_PHASES) + (not built))
    with pytest.raises(ValueError, match="count_phases: argument `command` "
                       "must be one of"):
        experiment.count_phases(config, "export")


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_demo_prints_only_the_claims(quiet, tmp_path, monkeypatch,
                                           capsys, benchmark_built):
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


HELP_THEN_AN_OP = """
import keras_ersm_launcher
try:
    keras_ersm_launcher.main(["train", "--help"])
except SystemExit as exit:
    assert exit.code == 0, exit.code
import tensorflow as tf
print(int(tf.constant(1) + 1))
"""


def test_help_and_the_cuda_probe_leave_the_console_clean():
    # TensorFlow looks for GPUs at its first device query; without a GPU
    # it logs "failed call to cuInit" as an ERROR, which an environment's
    # TF_CPP_MIN_LOG_LEVEL of 2 lets through: the launcher looks first,
    # with standard error elsewhere.
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", HELP_THEN_AN_OP],
                            capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--tensorboard DIR" in result.stdout and "--quiet" in (
        result.stdout)
    assert result.stdout.endswith("\n2\n")
    # Only on a machine with an NVIDIA driver and no GPU for TensorFlow,
    # one line says so.
    import keras_ersm_launcher

    unused_gpu = not tf.config.list_physical_devices("GPU") and (
        keras_ersm_launcher.nvidia_driver_installed())
    assert result.stderr == (
        keras_ersm_launcher.NO_GPU_WARNING + "\n" if unused_gpu else "")


def test_no_gpu_warning_only_where_a_driver_is_unused(monkeypatch, capfd):
    import keras_ersm_launcher

    gpus = tf.config.list_physical_devices("GPU")
    for driver in (False, True):
        monkeypatch.setattr(keras_ersm_launcher, "nvidia_driver_installed",
                            lambda driver=driver: driver)
        keras_ersm_launcher.quiet_tensorflow()
        warned = driver and not gpus
        assert capfd.readouterr().err == (
            keras_ersm_launcher.NO_GPU_WARNING + "\n" if warned else "")
