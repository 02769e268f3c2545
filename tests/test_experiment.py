"""ExperimentConfig validation, the early feature-layer and patch-size
checks, the grey occluder, build_pair's shared initialisation and the resume
errors of train_pair."""

import os

import keras
import numpy as np
import pytest

import keras_ersm
from keras_ersm import backbones
from keras_ersm import experiment
from keras_ersm.experiment import run_folder
from keras_ersm.experiment import training
from keras_ersm import graph
from keras_ersm import models
from keras_ersm.mask_options import AUTHORS
from keras_ersm.mask_options import MaskOptions

from training_stubs import NoFit
from training_stubs import OneBatch


def scratch(**fields):
    """A config of the "scratch" preset: MobileNetV2 trained from scratch,
    cut at block_6_expand_relu (what these tests exercise)."""
    return experiment.ExperimentConfig.from_preset("scratch", **fields)


def test_valid_configs_are_accepted_and_round_trip(tmp_path):
    default = scratch()
    quick = experiment.quick_config("scratch")
    assert (quick.image_size, quick.epochs, quick.occlusion_fractions) == (
        32, 10, (0.2, 0.5))
    experiment.save_config(quick, str(tmp_path))
    # JSON turns the tuple into a list; the loaded config still compares
    # equal, which --resume relies on.
    assert experiment.load_config(str(tmp_path)) == quick
    assert scratch(
        backbone="resnet50", feature_layer=None,
        occlusion_fractions=[0.5, 1], deletion_steps=None,
    ) == default.replace(backbone="ResNet50", feature_layer=None,
        occlusion_fractions=(0.5, 1.0), deletion_steps=None,
    )
    weights = tmp_path / "backbone.weights.h5"
    weights.write_bytes(b"")
    assert scratch(weights=str(weights)).weights == str(
        weights)
    assert scratch(weights="imagenet").weights == (
        "imagenet")


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("dataset", "imagenet",
         "one of ['ersm_benchmark', 'caltech_birds2011'"),
        ("backbone", "ResNet51", "one of ['BenchmarkConvNet', 'ConvNeXtTiny'"),
        ("backbone", None, "one of ['BenchmarkConvNet', 'ConvNeXtTiny'"),
        ("feature_layer", "", "None or a layer name"),
        ("weights", "imagenett",
         "None, 'imagenet', 'benchmark' or the path of a weights file (.h5)"),
        ("freeze_backbone", 1, "True or False"),
        ("image_size", 0, "an integer >= 32"),
        ("image_size", 31, "an integer >= 32"),
        ("image_size", 64.0, "an integer >= 32"),
        ("batch_size", 0, "an integer >= 1"),
        ("epochs", -3, "an integer >= 1"),
        ("epochs", True, "an integer >= 1"),
        ("train_examples", 0, "None or an integer >= 1"),
        ("test_examples", -1, "None or an integer >= 1"),
        ("learning_rate", 0.0, "a number > 0"),
        ("learning_rate", "x", "a number > 0"),
        ("weight_decay", -5, "a number >= 0"),
        ("formulation", "paper",
         "one of ('reference', 'coherent', 'keeping_cost')"),
        ("gate", "l0", "one of ('sigmoid', 'hard_concrete')"),
        ("output_scaling", "mean", "one of ('none', 'mask_mass')"),
        ("authors_dynamics", 1, "True or False"),
        ("pretrain_epochs", 0, "an integer >= 1"),
        ("pretrain_examples", 0, "None or an integer >= 1"),
        ("initial_keep", 1.0, "a number in (0, 1)"),
        ("initial_keep", 0.0, "a number in (0, 1)"),
        ("initial_keep", 1.5, "a number in (0, 1)"),
        ("initial_keep", float("nan"), "a number in (0, 1)"),
        ("patch_size", 0, "an integer >= 1"),
        ("unary_weight", -1e-3, "a number >= 0"),
        ("pairwise_weight", float("inf"), "a number >= 0"),
        ("energy_loss_weight", -1.0, "a number >= 0"),
        ("temperature", 0.0, "a number > 0"),
        ("coupling", -0.5, "a number >= 0"),
        ("mean_field_steps", -1, "an integer >= 0"),
        ("deletion_steps", 0, "None or an integer >= 1"),
        ("occlusion_fractions", (), "a non-empty sequence of numbers in "
         "(0, 1]"),
        ("occlusion_fractions", (0.2, 1.5), "a non-empty sequence"),
        ("occlusion_fractions", 0.5, "a non-empty sequence"),
        ("num_examples_shown", 0, "an integer >= 1"),
        ("seed", -1, "an integer in [0, 4294967295]"),
        ("seed", 2**32, "an integer in [0, 4294967295]"),
    ],
)
def test_invalid_fields_name_the_argument_and_domain(field, value, expected):
    with pytest.raises(ValueError) as info:
        scratch(**{field: value})
    message = str(info.value)
    assert message.startswith(f"ExperimentConfig: argument `{field}` must be")
    assert expected in message
    assert f"; received {value!r}." in message


def test_invalid_initial_keep_message():
    with pytest.raises(ValueError) as info:
        experiment.quick_config("scratch", initial_keep=1.0)
    assert str(info.value) == (
        "ExperimentConfig: argument `initial_keep` must be a number in "
        "(0, 1); received 1.0."
    )


def test_a_feature_layer_of_another_backbone_fails_with_the_fix():
    config = scratch(backbone="ResNet50")
    with pytest.raises(ValueError) as info:
        experiment.check_trainable(config)
    message = str(info.value)
    assert ("argument `feature_layer` must be None or a layer of ResNet50; "
            "received 'block_6_expand_relu'.") in message
    assert "feature_layer=None (`--feature-layer none`)" in message
    assert ("(token grid for 64x64 images): 'conv1_relu' (32x32), "
            "'conv2_block3_out' (16x16), 'conv3_block4_out' (8x8), "
            "'conv4_block6_out' (4x4), 'conv5_block3_out' (2x2).") in message
    # Every suggestion is valid.
    for layer in ("conv3_block4_out", None):
        experiment.check_trainable(
            config.replace(feature_layer=layer))
    experiment.check_trainable(scratch())

    with pytest.raises(ValueError, match=r"Did you mean "
                       r"\['block_6_expand_relu'"):
        experiment.check_trainable(
            scratch(feature_layer="block_6_expand_rel"))


def test_a_missing_weights_file_fails_before_training_not_when_loading(
    tmp_path
):
    # A finished run whose weights file has moved still loads its config
    # (to be evaluated); training with it fails at once.
    config = scratch(weights=str(tmp_path / "w.h5"))
    with pytest.raises(ValueError, match="`weights` names no file"):
        experiment.check_trainable(config)


def test_a_bad_feature_layer_fails_before_anything_is_written_or_loaded(
    tmp_path, monkeypatch
):
    def load_data(config):
        raise AssertionError("the data was loaded")

    monkeypatch.setattr(training, "load_data", load_data)
    output = tmp_path / "run"
    config = experiment.quick_config("scratch", backbone="ResNet50")
    with pytest.raises(ValueError, match="--feature-layer none"):
        experiment.train_pair(config, str(output))
    with pytest.raises(ValueError, match="--feature-layer none"):
        experiment.run_experiment(config, str(output))
    assert not output.exists()


def test_resume_with_other_options_lists_the_differences(tmp_path):
    experiment.save_config(experiment.quick_config("scratch"), str(tmp_path))
    config = experiment.quick_config("scratch", epochs=3, formulation="coherent")
    with pytest.raises(ValueError) as info:
        experiment.train_pair(config, str(tmp_path), resume=True)
    assert str(info.value) == (
        f"resume: the options differ from those of the run in {tmp_path} "
        "(epochs: 10 in the run, 3 now; formulation: 'reference' in the run, "
        "'coherent' now); resume with the same options."
    )


def test_an_interrupted_run_points_to_both_commands(tmp_path):
    os.makedirs(tmp_path / "backup_baseline")
    with pytest.raises(experiment.RunFolderError) as info:
        experiment.train(
            NoFit("baseline"), {"train": OneBatch()},
            experiment.quick_config("scratch"), str(tmp_path),
        )
    assert "`--resume` of `ersm train` or `ersm demo`" in str(info.value)


@pytest.mark.parametrize("interrupted", ["backup_baseline", "backup_ersm",
                                         None])
def test_a_failed_start_leaves_the_run_folders_config(interrupted, tmp_path,
                                                      monkeypatch):
    # A run in the folder: its config must keep describing it (and stay
    # resumable) when a new start fails before training.
    run = experiment.quick_config("scratch", epochs=6)
    experiment.save_config(run, str(tmp_path))
    if interrupted:
        os.makedirs(tmp_path / interrupted)

    def offline(config):
        raise OSError("no network")

    monkeypatch.setattr(training, "load_data", offline)
    # Nor is the benchmark rendered, where it is not built.
    monkeypatch.setattr(training, "benchmark_phase", lambda *args: None)
    other = experiment.quick_config("scratch", epochs=7)
    error = experiment.RunFolderError if interrupted else OSError
    with pytest.raises(error):
        experiment.train_pair(other, str(tmp_path))
    assert experiment.load_config(str(tmp_path)) == run


def test_export_needs_only_the_ersm_model(tmp_path):
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    ersm = models.build_classifier(keras.Model(inputs, features), 2,
                                   freeze_backbone=False)
    ersm.save(tmp_path / "ersm.keras")
    served = tmp_path / "served"
    experiment.export_run(str(tmp_path), str(served))
    assert (served / "saved_model.pb").exists()


@pytest.mark.parametrize(
    "temperature, initial_keep", [(1.0, 0.95), (2.0, 0.95), (2.0, 0.7)]
)
def test_build_pair_shares_initial_weights_and_keep(temperature,
                                                    initial_keep):
    config = experiment.quick_config("scratch", 
        weights=None, temperature=temperature, initial_keep=initial_keep
    )
    baseline, ersm = experiment.build_pair(config, num_classes=10)

    baseline_weights = {w.path: w for w in baseline.weights}
    ersm_weights = {w.path: w for w in ersm.weights}
    assert len(baseline_weights) == len(baseline.weights)
    # The ERSM model is the baseline plus its mask layer.
    mask = graph.energy_masks(ersm)[0]
    assert set(ersm_weights) - set(baseline_weights) == {
        w.path for w in mask.weights
    }
    assert set(baseline_weights) <= set(ersm_weights)
    assert "predictions/kernel" in baseline_weights
    for path, weight in baseline_weights.items():
        np.testing.assert_array_equal(
            weight.numpy(), ersm_weights[path].numpy(), err_msg=path
        )

    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3))
    features = keras.Model(ersm.inputs, mask.input)([images])
    keep = np.asarray(mask.explain(features)["keep"])
    assert keep.shape == (2, 4, 4)  # block_6_expand_relu: 1/8 of 32
    np.testing.assert_allclose(keep, initial_keep, rtol=1e-6)


def test_an_auto_named_feature_layer_is_the_same_layer_in_both_models():
    # MobileNetV3Small's stage ends have auto-generated names; builds
    # earlier in the process must not renumber them.
    backbones.create("MobileNetV3Small", (32, 32, 3), weights=None)
    config = experiment.quick_config("scratch", 
        backbone="MobileNetV3Small", feature_layer="activation_1",
        weights=None,
    )
    with pytest.raises(ValueError) as info:
        experiment.check_trainable(
            config.replace(feature_layer="nope"))
    assert "'activation_1' (4x4)" in str(info.value)
    experiment.check_trainable(config)

    baseline, ersm = experiment.build_pair(config, num_classes=10)
    mask = graph.energy_masks(ersm)[0]
    pooled = baseline.get_layer("avg_pool").input
    for model, features in ((baseline, pooled), (ersm, mask.input)):
        layer = features._keras_history.operation
        names = backbones.canonical_layer_names(model)
        assert names[model.layers.index(layer)] == "activation_1"
        assert tuple(features.shape) == (None, 4, 4, 96)
    # The two builds numbered Keras's names differently.
    assert pooled._keras_history.operation.name != (
        mask.input._keras_history.operation.name)


@pytest.mark.parametrize(
    "backbone, module",
    [("ResNet50", keras.applications.resnet50),  # caffe: BGR, mean removed
     ("DenseNet121", keras.applications.densenet),  # torch: standardised
     ("MobileNetV2", keras.applications.mobilenet_v2)],  # tf: [-1, 1]
)
def test_the_occluder_is_the_preprocessed_grey_pixel(backbone, module):
    grey = np.full((1, 1, 1, 3), 127.5, np.float32)
    expected = np.asarray(module.preprocess_input(grey))[0, 0, 0]
    fill = experiment.grey_fill_value(backbone)
    # A list, one value per channel, as metrics.json records it.
    assert isinstance(fill, list) and len(fill) == 3
    np.testing.assert_allclose(fill, expected, rtol=1e-6)


def test_a_patch_size_that_does_not_divide_the_grid_fails_with_the_grid(
    tmp_path, monkeypatch
):
    default = scratch()
    # A patch size that fits first: the cached architecture check must not
    # let the same backbone pass with another patch size.
    experiment.check_trainable(default.replace(patch_size=8))
    with pytest.raises(ValueError) as info:
        experiment.check_trainable(
            default.replace(patch_size=3))
    assert str(info.value) == (
        "ExperimentConfig: argument `patch_size` must be an integer that "
        "divides the height and width of the output of "
        "'block_6_expand_relu' on 64x64 images (8 x 8); received 3."
    )
    last = scratch(backbone="ResNet50",
                                       feature_layer=None)
    experiment.check_trainable(last)
    with pytest.raises(ValueError, match=r"divides the height and width of "
                       r"ResNet50's last feature map on 64x64 images "
                       r"\(2 x 2\); received 4\."):
        experiment.check_trainable(
            last.replace(patch_size=4))

    def load_data(config):
        raise AssertionError("the data was loaded")

    monkeypatch.setattr(training, "load_data", load_data)
    output = tmp_path / "run"
    config = experiment.quick_config("scratch", patch_size=3)
    for run in (experiment.train_pair, experiment.run_experiment):
        with pytest.raises(ValueError, match=r"argument `patch_size` must "
                           r"be an integer that divides .* on 32x32 images "
                           r"\(4 x 4\); received 3\."):
            run(config, str(output))
    assert not output.exists()


def test_history_keeps_the_last_row_of_each_epoch(tmp_path):
    # Killed after logging epoch 1, before backing it up: the resumed run
    # logs epoch 1 again.
    (tmp_path / "history_ersm.csv").write_text(
        "epoch,loss,val_loss\n0,2.0,NA\n1,1.5,NA\n1,1.4,NA\n2,1.3,NA\n")
    assert experiment.read_history(str(tmp_path), "ersm") == {
        "loss": [2.0, 1.4, 1.3]}


class KilledWhileSaving(Exception):
    pass


def test_a_kill_while_saving_a_model_resumes_from_its_backup(tmp_path,
                                                             monkeypatch):
    output = str(tmp_path)
    config = experiment.quick_config("scratch")

    def tiny_pair(config, num_classes):
        inputs = keras.Input((4, 4, 3))
        masked = keras_ersm.EnergyMask()(keras.layers.Conv2D(2, 1)(inputs))
        ersm = keras.Model(inputs, keras.layers.Flatten()(masked),
                           name="ersm")
        baseline = keras.Model(inputs, keras.layers.Flatten()(inputs),
                               name="baseline")
        return baseline, ersm

    trained = []

    def train(model, data, config, output_dir, *, resume=False, verbose=1,
              tensorboard=None):
        # What fit leaves: the log and the last epoch's backup.
        trained.append((model.name, resume))
        os.makedirs(run_folder.backup_path(output_dir, model.name),
                    exist_ok=True)
        with open(os.path.join(output_dir,
                               f"history_{model.name}.csv"), "w") as file:
            file.write("epoch,loss\n0,1.0\n")

    def killed_save(self, path, *args, **kwargs):
        with open(path, "wb") as file:
            file.write(b"PK\x03\x04")  # the start of a zip file
        raise KilledWhileSaving

    monkeypatch.setattr(training, "load_data", lambda config: {})
    monkeypatch.setattr(training, "benchmark_phase", lambda *args: None)
    monkeypatch.setattr(training, "check_trainable", lambda config: None)
    monkeypatch.setattr(training, "build_pair", tiny_pair)
    monkeypatch.setattr(training, "train", train)
    with monkeypatch.context() as patch:
        patch.setattr(keras.Model, "save", killed_save)
        with pytest.raises(KilledWhileSaving):
            experiment.train_pair(config, output)
    # No baseline.keras to mistake for a finished model; its backup kept.
    assert not os.path.exists(os.path.join(output, "baseline.keras"))
    assert os.path.isdir(run_folder.backup_path(output, "baseline"))

    experiment.train_pair(config, output, resume=True)
    assert trained == [("baseline", False), ("baseline", True),
                       ("ersm", True)]
    for name in ("baseline", "ersm"):
        keras.saving.load_model(os.path.join(output, f"{name}.keras"))
        assert not os.path.exists(run_folder.backup_path(output, name))


class KilledAfterBackup(Exception):
    pass


def tiny_classifier(name):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.Conv2D(4, 4, strides=4)(inputs)
    masked = keras_ersm.EnergyMask()(features)
    outputs = keras.layers.Dense(10, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(masked))
    return keras.Model(inputs, outputs, name=name)


def test_every_model_and_every_resumed_run_sees_epoch_e_in_one_order(
        tmp_path, monkeypatch):
    config = experiment.quick_config("scratch", epochs=3, train_examples=96)
    assert experiment.NUM_CLASSES[config.dataset] == 10
    data = experiment.load_data(config)
    os.makedirs(tmp_path / "a")
    os.makedirs(tmp_path / "b")
    first = tiny_classifier("baseline")
    experiment.train(first, data, config, str(tmp_path / "a"), verbose=0)
    # The next model trained on the same data (as `train_pair` does).
    second = tiny_classifier("ersm")
    experiment.train(second, data, config, str(tmp_path / "a"), verbose=0)
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    class BackupThenKill(keras.callbacks.BackupAndRestore):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            if epoch == 1:
                raise KilledAfterBackup

    run = str(tmp_path / "b")
    with monkeypatch.context() as patch:
        patch.setattr(keras.callbacks, "BackupAndRestore", BackupThenKill)
        with pytest.raises(KilledAfterBackup):
            experiment.train(tiny_classifier("ersm"),
                             experiment.load_data(config), config, run,
                             verbose=0)
    # As in a new process: new data pipelines, a new model.
    resumed = tiny_classifier("ersm")
    experiment.train(resumed, experiment.load_data(config), config, run,
                     resume=True, verbose=0)
    assert experiment.read_history(run, "ersm")["loss"] == pytest.approx(
        experiment.read_history(str(tmp_path / "a"), "ersm")["loss"],
        rel=1e-6)
    for a, b in zip(first.weights, resumed.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_the_default_is_the_learned_preset_on_the_pretrained_backbone():
    config = experiment.ExperimentConfig()
    assert config == experiment.ExperimentConfig.from_preset("learned")
    assert (config.backbone, config.weights, config.freeze_backbone,
            config.feature_layer) == ("BenchmarkConvNet", "benchmark", True,
                                      None)
    assert config.mask == MaskOptions()
    # The grid of the pre-trained backbone, from its architecture alone.
    experiment.check_trainable(config)
    assert backbones.feature_grid("BenchmarkConvNet", 64, None) == (8, 8)


def test_quick_configs_with_hard_concrete_gates_start_at_one_half():
    # 630 quick steps cannot leave a 0.95 start with hard-concrete gates.
    assert experiment.quick_config("learned").initial_keep == 0.5
    assert experiment.quick_config(
        "reference", gate="hard_concrete").initial_keep == 0.5
    assert experiment.quick_config("reference").initial_keep == 0.95
    assert experiment.quick_config(
        "learned", initial_keep=0.9).initial_keep == 0.9


def test_mask_fields_are_spelt_flat_and_kept_as_mask_options():
    config = experiment.ExperimentConfig.from_dict(
        {"temperature": 0.5, "epochs": 3, "damping": 0.5})
    assert config.mask == MaskOptions(temperature=0.5, damping=0.5)
    values = config.to_dict()
    assert "mask" not in values
    assert (values["temperature"], values["damping"], values["epochs"]) == (
        0.5, 0.5, 3)
    assert experiment.ExperimentConfig.from_dict(values) == config
    assert config.replace(patch_size=2).mask.patch_size == 2
    with pytest.raises(ValueError, match="^ExperimentConfig: argument "
                       "`damping` must be a number in \\(0, 1\\]; "
                       "received 0.0.$"):
        config.replace(damping=0.0)


def test_presets():
    reference = experiment.ExperimentConfig.from_preset("reference")
    assert reference.mask_kwargs()["formulation"] == "reference"
    assert reference.weights == "benchmark"
    authors = experiment.ExperimentConfig.from_preset("authors", epochs=4)
    kwargs = authors.mask_kwargs()
    assert authors.epochs == 4
    # The authors' recipe: batch 32, AdamW 1e-3 (weight decay 1e-4), cosine
    # decay stepped once per epoch.
    assert (authors.batch_size, authors.learning_rate, authors.weight_decay,
            authors.epoch_schedule) == (32, 1e-3, 1e-4, True)
    assert authors.mask == AUTHORS == reference.mask
    assert kwargs["score_bias_trainable"] is False
    assert kwargs["position_bias"] is True
    layer = keras_ersm.EnergyMask(**kwargs)
    layer.build((1, 8, 8, 4))
    np.testing.assert_array_equal(layer.score_bias, 6.0)
    assert scratch().backbone == "MobileNetV2"
    with pytest.raises(ValueError, match="argument `preset` must be one of"):
        experiment.ExperimentConfig.from_preset("best")


def test_gate_is_checked():
    with pytest.raises(ValueError, match="argument `gate` must be one of"):
        experiment.ExperimentConfig.from_dict({"gate": "l0"})
    assert experiment.ExperimentConfig.from_dict(
        {"formulation": "coherent"}).mask.gate == "hard_concrete"


def test_benchmark_weights_need_the_benchmark():
    with pytest.raises(ValueError, match="^ExperimentConfig: argument "
                       "`weights` must be 'benchmark' only on dataset "
                       "'ersm_benchmark' \\(dataset 'cifar10' given\\); "
                       "received 'benchmark'.$"):
        experiment.ExperimentConfig(dataset="cifar10")


@pytest.mark.parametrize("backbone, weights, expected", [
    ("BenchmarkConvNet", "benchmark", None),
    ("MobileNetV2", "benchmark", "block_5_expand_relu"),
    ("ResNet50", "benchmark", "conv2_block3_out"),
    ("ResNet50", "imagenet", None),
    ("MobileNetV2", None, None),
])
def test_the_automatic_feature_layer_has_local_tokens_on_the_benchmark(
        backbone, weights, expected):
    config = experiment.ExperimentConfig(backbone=backbone, weights=weights)
    assert config.feature_layer == expected
    # Stored resolved: the run folder names the layer it trained at.
    assert config.to_dict()["feature_layer"] == expected
    assert experiment.ExperimentConfig(
        backbone=backbone, weights=weights,
        feature_layer="block1_relu").feature_layer == "block1_relu"


def test_a_new_backbone_resolves_the_feature_layer_again():
    config = experiment.ExperimentConfig()
    assert config.replace(backbone="MobileNetV2").feature_layer == (
        "block_5_expand_relu")
    assert config.replace(weights=None).feature_layer is None
    assert config.replace(backbone="ResNet50",
                          feature_layer=None).feature_layer is None
    # A config of a run keeps its layer when other fields change.
    mobile = config.replace(backbone="MobileNetV2", feature_layer="block_4_add")
    assert mobile.replace(epochs=2).feature_layer == "block_4_add"


def _tiny_pair():
    """A baseline and an ERSM model on 16x16 images: an 8x8 feature map, a
    mask on 2x2 patches (a 4x4 token grid)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.Conv2D(8, 3, strides=2, padding="same",
                                   activation="relu")(inputs)
    masked = keras_ersm.EnergyMask(patch_size=2, name="mask")(features)
    head = keras.layers.GlobalAveragePooling2D()(masked)
    ersm = keras.Model(inputs, keras.layers.Dense(3)(head))
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    baseline = keras.Model(inputs, keras.layers.Dense(3)(pooled))
    return baseline, ersm


def _tiny_split(seed):
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    images = rng.random((8, 16, 16, 3), np.float32)
    labels = rng.integers(0, 3, 8).astype(np.int32)
    masks = np.zeros((8, 16, 16, 1), np.float32)
    for mask in masks:
        top, left = rng.integers(0, 8, size=2)
        mask[top:top + 8, left:left + 6] = 1.0
    return tf.data.Dataset.from_tensor_slices((images, labels, masks)).batch(4)


def test_evaluate_pair_measures_pxap_validated_iou_and_relative_occlusion(
        tmp_path):
    from keras_ersm import report
    from keras_ersm.report import summary

    baseline, ersm = _tiny_pair()
    data = {"test": _tiny_split(0), "test_shuffled": _tiny_split(1),
            "validation": _tiny_split(2)}
    config = experiment.ExperimentConfig(
        deletion_steps=2, occlusion_fractions=(0.2, 0.5), seed=0)
    metrics = experiment.evaluate_pair(baseline, ersm, data, config)
    for name in ("ersm_keep", "magnitude_ersm", "gradcam_baseline"):
        pxap = metrics["pxap"][name]
        # Grad-CAM of the 8x8 map is pooled onto the mask's 4x4 grid.
        assert pxap["grid"] == [4, 4] and pxap["num_tokens"] == 128
        assert 0 <= pxap["pxap"] <= 1 and pxap["split"] == "test"
        validated = metrics["validated_localization"][name]
        assert validated["validation_split"] == "validation"
        assert validated["threshold"] in (
            validated["validation_curve"]["thresholds"])
        assert validated["num_images"] == 8
        assert validated["validation_num_images"] == 8
    relative = metrics["object_relative_occlusion"]
    assert set(relative) == {"test", "test_shuffled"}
    for split, results in relative.items():
        for result in results.values():
            assert result["split"] == split and result["seed"] == 0
            assert result["box_part"]["fractions"] == [0.2, 0.25, 0.5]
            assert result["clutter"]["fractions"] == [0.2, 0.5]
    # The clean accuracy on test is the accuracy measured before.
    assert relative["test"]["ersm"]["clean_accuracy"] == (
        metrics["accuracy"]["ersm"]["accuracy"])
    # The report, and the summary of two seeds (the same measurements,
    # written as two runs).
    metrics.update(training={}, mask_layers=[], runtime_seconds=1.0)
    examples = experiment.example_maps(baseline, ersm, data, 2)
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"seed{seed}"
        config = config.replace(seed=seed)
        experiment.save_config(config, str(run))
        written = report.write_report(
            {**metrics, "config": config.to_dict()}, examples, str(run))
        runs.append(str(run))
    markdown = (tmp_path / "seed1" / "report.md").read_text()
    assert "| map | PxAP | IoU at the validation threshold |" in markdown
    assert "| split | model | clean | (a) clutter |" in markdown
    assert report.CLAIM_4_READING in markdown
    assert "(coverage)" in markdown and "(precision;" in markdown
    occlusion_claim = written["claims"][3]
    assert occlusion_claim["claim"] == "robustness to structured occlusion"
    assert "; on test_shuffled: clean baseline" in occlusion_claim["evidence"]
    table = summary.summary_markdown(summary.summarize_runs(runs))
    for row in ("PxAP: ERSM keep probabilities", "PxAP: feature magnitude",
                "PxAP: baseline Grad-CAM",
                "IoU at the validation threshold: ERSM keep probabilities",
                "validation threshold: baseline Grad-CAM",
                "coverage: object tokens kept",
                "precision: kept tokens on the object",
                "test_shuffled, (a) clutter off the object's box, mean "
                "accuracy: ERSM",
                "test_shuffled, (b) a quarter of the object's box hidden, "
                "accuracy: baseline",
                "test, (c) the whole box hidden, accuracy: ERSM"):
        assert f"| {row} | " in table, row
    assert "| PxAP of the keep probabilities above magnitude's and " in table
    assert "not measured" not in table.split("| target")[1]


@pytest.mark.parametrize("train_examples, train_split", [
    (None, "train[:90%]"), (50, "train[:50]")])
def test_datasets_with_object_masks_hold_out_a_validation_split(
        monkeypatch, train_examples, train_split):
    from keras_ersm.experiment import data as data_module

    requested = {}

    def load(name, split, *args, with_object_masks=False, **kwargs):
        requested[split] = with_object_masks
        return split

    def load_benchmark(split, *args, with_object_masks=False, **kwargs):
        requested[split] = with_object_masks
        return split

    monkeypatch.setattr(data_module, "load", load)
    monkeypatch.setattr(data_module, "load_benchmark", load_benchmark)
    pets = experiment.ExperimentConfig(
        dataset="oxford_iiit_pet", backbone="ResNet50", weights=None,
        train_examples=train_examples, test_examples=20)
    data = experiment.load_data(pets)
    # The last tenth of train, whole, with object masks; never trained on.
    assert data["validation"] == "train[90%:]"
    assert data["train"] == train_split and data["test"] == "test[:20]"
    assert requested == {train_split: False, "test[:20]": True,
                         "train[90%:]": True}
    requested.clear()
    data = experiment.load_data(experiment.ExperimentConfig(test_examples=20))
    assert data["validation"] == "validation[:20]"
    assert requested["validation[:20]"] is True
    requested.clear()
    cifar = experiment.ExperimentConfig(dataset="cifar10", backbone="ResNet50",
                                        weights=None)
    assert "validation" not in experiment.load_data(cifar)
