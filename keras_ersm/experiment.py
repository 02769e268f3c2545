"""Side-by-side experiments: a baseline and an ERSM model, trained and measured.

`run_experiment` is what `ersm demo` and `ersm train` run: it builds two
classifiers on the same backbone architecture from the same seed — one
without and one with an `EnergyMask` before the pooled head — trains both on
the same data, measures every claim of the paper on both (see
`keras_ersm.evaluation`), exports the ERSM model and writes the report
(see `keras_ersm.report`).
"""

import contextlib
import dataclasses
import difflib
import functools
import json
import os
import shutil
import time

import h5py

import keras
import numpy as np

from keras_ersm import backbones
from keras_ersm import evaluation
from keras_ersm import models
from keras_ersm import validation
from keras_ersm.callbacks import MaskTensorBoard
from keras_ersm.datasets import BENCHMARK_NAME
from keras_ersm.datasets import EpochOrder
from keras_ersm.datasets import SUPPORTED_DATASETS
from keras_ersm.datasets import get_preprocessing
from keras_ersm.datasets import load
from keras_ersm.datasets import load_benchmark
from keras_ersm import pretraining
from keras_ersm.energy import FORMULATIONS
from keras_ersm.layers.energy_mask import check_gate
from keras_ersm.energy import OUTPUT_SCALINGS
from keras_ersm.saved_model import export

DATASETS = (BENCHMARK_NAME,) + tuple(SUPPORTED_DATASETS)
# Validation messages name the config ("ExperimentConfig: argument ...").
_OWNER = "ExperimentConfig"
# Datasets whose test split comes with object masks.
MASKED_DATASETS = (BENCHMARK_NAME, "oxford_iiit_pet", "caltech_birds2011")
NUM_CLASSES = {
    BENCHMARK_NAME: 10,
    "cifar10": 10,
    "oxford_iiit_pet": 37,
    "caltech_birds2011": 200,
    "food101": 101,
}
TEST_SPLITS = {"food101": "validation"}
# `weights` of a backbone pre-trained on the benchmark (`pretraining`).
BENCHMARK_WEIGHTS = "benchmark"


class RunFolderError(ValueError):
    """An output folder that cannot serve the command: no run in it to
    resume, evaluate or export, other options than its run's, an
    interrupted run that needs `--resume`, or a file in its place.
    `ersm` reports it as a usage error."""


@dataclasses.dataclass
class ExperimentConfig:
    """Everything that defines one run; saved as `config.json`.

    Every field is checked on construction (`ValueError` naming it); the
    feature layer, whether `patch_size` divides its grid (both need the
    backbone's architecture) and a weights file's existence are checked by
    `check_trainable`, before training.

    Attributes:
        dataset: one of `DATASETS`.
        backbone: a `keras_ersm.backbones.BACKBONES` name, any case (stored
            as spelt there).
        feature_layer: `None` for the backbone's last feature map, or the
            name of an earlier layer to cut the backbone at (a finer token
            grid for small images; see `check_trainable`).
        weights: `None` (from scratch), `"imagenet"`, `"benchmark"`
            (`BenchmarkConvNet` pre-trained on the benchmark's `pretrain`
            split, cached: `keras_ersm.pretraining`) or the path of a
            weights file.
        freeze_backbone: the authors freeze a pretrained backbone; from
            scratch it must train.
        pretrain_epochs, pretrain_examples: the pre-training of
            `weights="benchmark"` (`None`: the whole split). One
            pre-trained backbone (seed 0) serves every run seed, as one
            set of ImageNet weights would.
        image_size, batch_size, epochs: the data and schedule.
        train_examples, test_examples: `None` for whole splits, or the
            first n examples (quick runs).
        learning_rate, weight_decay: AdamW with cosine decay (the authors'
            optimiser).
        initial_keep: the keep value of every token at initialisation.
        authors_dynamics: bool, train the mask as the authors' code does
            (`keras_ersm.models.AUTHORS_DYNAMICS_KWARGS`: a per-position
            bias frozen at +6, PyTorch's kernel initialisation);
            `initial_keep` is then unused.
        formulation, gate, output_scaling, patch_size, unary_weight,
        pairwise_weight, energy_loss_weight, temperature, coupling,
        mean_field_steps: the `EnergyMask` arguments.
        deletion_steps: points of each deletion curve; `None` for every
            number of deleted tokens.
        occlusion_fractions: image fractions covered by one grey square.
        num_examples_shown: images in the mask figure.
        seed: seeds initialisation, data order and every random ranking.
    """

    dataset: str = BENCHMARK_NAME
    backbone: str = "BenchmarkConvNet"
    feature_layer: str = None
    weights: str = "benchmark"
    freeze_backbone: bool = True
    pretrain_epochs: int = 16
    pretrain_examples: int = None
    image_size: int = 64
    batch_size: int = 64
    epochs: int = 20
    train_examples: int = None
    test_examples: int = None
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    # The configuration whose mask learns (models.LEARNED_MASK_KWARGS).
    formulation: str = models.LEARNED_MASK_KWARGS["formulation"]
    gate: str = models.LEARNED_MASK_KWARGS["gate"]
    output_scaling: str = models.LEARNED_MASK_KWARGS["output_scaling"]
    initial_keep: float = 0.95
    authors_dynamics: bool = False
    patch_size: int = 1
    unary_weight: float = models.LEARNED_MASK_KWARGS["unary_weight"]
    pairwise_weight: float = models.LEARNED_MASK_KWARGS["pairwise_weight"]
    energy_loss_weight: float = 1.0
    temperature: float = models.LEARNED_MASK_KWARGS["temperature"]
    coupling: float = 0.5
    mean_field_steps: int = 3
    deletion_steps: int = 40
    occlusion_fractions: tuple = (0.1, 0.2, 0.3, 0.4, 0.5)
    num_examples_shown: int = 6
    seed: int = 0

    def __post_init__(self):
        validation.check_choice(_OWNER, "dataset", self.dataset,
                                list(DATASETS))
        self.backbone = _canonical_backbone(self.backbone)
        if self.feature_layer is not None and (
            not isinstance(self.feature_layer, str) or not self.feature_layer
        ):
            raise validation.invalid(_OWNER, "feature_layer",
                                     "None or a layer name",
                                     self.feature_layer)
        # A file's existence is checked before training (`check_trainable`),
        # not here: a finished run whose weights file has moved
        # must still load its config to be evaluated.
        if self.weights not in (None, "imagenet", BENCHMARK_WEIGHTS) and not (
            isinstance(self.weights, str) and self.weights.endswith(".h5")
        ):
            raise validation.invalid(
                _OWNER, "weights", f"None, 'imagenet', '{BENCHMARK_WEIGHTS}' "
                "or the path of a weights file (.h5)", self.weights,
            )
        if self.weights == BENCHMARK_WEIGHTS and (
            self.backbone != pretraining.BACKBONE
            or self.dataset != BENCHMARK_NAME
        ):
            raise validation.invalid(
                _OWNER, "weights", f"'{BENCHMARK_WEIGHTS}' only with backbone "
                f"'{pretraining.BACKBONE}' on dataset '{BENCHMARK_NAME}' "
                f"(backbone {self.backbone!r}, dataset {self.dataset!r} "
                "given)", self.weights,
            )
        validation.check_bool(_OWNER, "freeze_backbone",
                              self.freeze_backbone)
        validation.check_bool(_OWNER, "authors_dynamics",
                              self.authors_dynamics)
        check_gate(_OWNER, self.gate)
        validation.check_choice(_OWNER, "output_scaling",
                                self.output_scaling, list(OUTPUT_SCALINGS))
        # Keras Applications backbones reject inputs smaller than 32 x 32.
        validation.check_integer(_OWNER, "image_size", self.image_size, 32)
        for name in ("batch_size", "epochs", "patch_size",
                     "num_examples_shown", "pretrain_epochs"):
            validation.check_integer(_OWNER, name, getattr(self, name), 1)
        for name in ("train_examples", "test_examples", "deletion_steps",
                     "pretrain_examples"):
            validation.check_integer(_OWNER, name, getattr(self, name), 1,
                                     optional=True)
        validation.check_integer(_OWNER, "mean_field_steps",
                                 self.mean_field_steps, 0)
        # numpy's seeding, under keras.utils.set_random_seed, is 32-bit.
        validation.check_integer(_OWNER, "seed", self.seed, 0,
                                 maximum=2**32 - 1)
        validation.check_number(_OWNER, "learning_rate", self.learning_rate,
                                "a number > 0", lambda v: v > 0)
        for name in ("weight_decay", "unary_weight", "pairwise_weight",
                     "energy_loss_weight", "coupling"):
            validation.check_number(_OWNER, name, getattr(self, name),
                                    "a number >= 0", lambda v: v >= 0)
        validation.check_number(_OWNER, "temperature", self.temperature,
                                "a number > 0", lambda v: v > 0)
        # The score bias is the logit of initial_keep.
        validation.check_number(_OWNER, "initial_keep", self.initial_keep,
                                "a number in (0, 1)", lambda v: 0 < v < 1)
        validation.check_choice(_OWNER, "formulation", self.formulation,
                                list(FORMULATIONS))
        fractions = self.occlusion_fractions
        if (
            isinstance(fractions, (str, bytes))
            or not isinstance(fractions, (tuple, list))
            or not fractions
            or not all(validation.is_finite_number(f) and 0 < f <= 1
                       for f in fractions)
        ):
            raise validation.invalid(
                _OWNER, "occlusion_fractions",
                "a non-empty sequence of numbers in (0, 1]", fractions,
            )
        # A tuple, also when read from JSON, so configs compare equal.
        self.occlusion_fractions = tuple(fractions)

    def mask_kwargs(self):
        kwargs = dict(
            formulation=self.formulation,
            gate=self.gate,
            output_scaling=self.output_scaling,
            patch_size=self.patch_size,
            unary_weight=self.unary_weight,
            pairwise_weight=self.pairwise_weight,
            energy_loss_weight=self.energy_loss_weight,
            temperature=self.temperature,
            coupling=self.coupling,
            mean_field_steps=self.mean_field_steps,
            seed=self.seed,
        )
        if self.authors_dynamics:
            return dict(kwargs, **models.AUTHORS_DYNAMICS_KWARGS)
        return dict(kwargs, score_bias_initializer=models.initial_keep_bias(
            self.initial_keep, self.temperature
        ))

    @classmethod
    def from_preset(cls, preset="learned", **overrides):
        """A config from one of `PRESETS`, with `overrides` on top."""
        validation.check_choice(_OWNER, "preset", preset, list(PRESETS))
        return cls(**{**PRESETS[preset], **overrides})

    def to_dict(self):
        values = dataclasses.asdict(self)
        values["occlusion_fractions"] = list(self.occlusion_fractions)
        return values


# The authors' energy, unchanged, in place of the default's.
_REFERENCE_MASK = dict(
    models.AUTHORS_MASK_KWARGS, gate="sigmoid", output_scaling="none",
)
# Named starting points of a config (`ersm train/demo --preset`).
PRESETS = {
    # The default: the mask that learns, on the frozen pre-trained backbone.
    "learned": {},
    # The authors' layer on the same backbone and data.
    "reference": _REFERENCE_MASK,
    # The authors' layer trained as their code trains it.
    "authors": dict(_REFERENCE_MASK, authors_dynamics=True),
    # The earlier default: MobileNetV2 trained from scratch with the mask.
    "scratch": dict(
        _REFERENCE_MASK, backbone="MobileNetV2",
        feature_layer="block_6_expand_relu", weights=None,
        freeze_backbone=False, epochs=8,
    ),
}


def _canonical_backbone(name):
    by_lower = {key.lower(): key for key in backbones.BACKBONES}
    if isinstance(name, str) and name.lower() in by_lower:
        return by_lower[name.lower()]
    close = difflib.get_close_matches(str(name), list(backbones.BACKBONES))
    raise ValueError(
        f"ExperimentConfig: argument `backbone` must be one of "
        f"{sorted(backbones.BACKBONES)} (any case); received {name!r}."
        + (f" Did you mean {close}?" if close else "")
    )


def quick_config(preset="learned", **overrides):
    """A tiny configuration of a preset that runs end to end in a few
    minutes (a smoke test, not a measurement)."""
    values = dict(
        image_size=32,
        batch_size=32,
        epochs=10,
        train_examples=2000,
        test_examples=128,
        pretrain_epochs=8,
        deletion_steps=8,
        occlusion_fractions=(0.2, 0.5),
        num_examples_shown=4,
    )
    if preset == "learned":
        # Hard-concrete gates take ~1,500 steps to leave a 0.95 start; the
        # quick run has 630, so it starts where the gates decide at once.
        # The start does not set where the mask ends (docs/mask_learning.md).
        values["initial_keep"] = 0.5
    values.update(overrides)
    return ExperimentConfig.from_preset(preset, **values)


def _split(name, count):
    return name if count is None else f"{name}[:{count}]"


def load_data(config):
    """The train, test (with masks where available) and shuffled splits,
    and under `"order"` the `EpochOrder` that shuffles the train split:
    every model trained on it sees the same order in epoch e, also when
    resumed in another process."""
    order = EpochOrder()
    data = {"order": order}
    if config.dataset == BENCHMARK_NAME:

        def get(split, count, **kwargs):
            return load_benchmark(
                _split(split, count), config.batch_size, config.image_size,
                backbone=config.backbone, seed=config.seed, **kwargs,
            )

        data["train"] = get("train", config.train_examples, order=order)
        data["test"] = get("test", config.test_examples, with_masks=True)
        data["test_shuffled"] = get(
            "test_shuffled", config.test_examples, with_masks=True
        )
        return data

    def get(split, count, **kwargs):
        return load(
            config.dataset, _split(split, count), config.image_size,
            config.batch_size, backbone=config.backbone, seed=config.seed,
            **kwargs,
        )

    data["train"] = get("train", config.train_examples, order=order)
    data["test"] = get(
        TEST_SPLITS.get(config.dataset, "test"),
        config.test_examples,
        with_masks=config.dataset in MASKED_DATASETS,
    )
    return data


def pretrain_backbone(config, verbose=0):
    """The backbone of `weights="benchmark"`, pre-trained (or loaded from
    the cache, `keras_ersm.pretraining`), with its pre-training info."""
    return pretraining.pretrained_benchmark_backbone(
        config.image_size, epochs=config.pretrain_epochs,
        num_examples=config.pretrain_examples, verbose=verbose,
    )


def build_backbone(config):
    """The backbone, cut at `config.feature_layer` when one is given."""
    if config.weights == BENCHMARK_WEIGHTS:
        backbone, _ = pretrain_backbone(config)
    else:
        backbone = backbones.create(
            config.backbone,
            (config.image_size, config.image_size, 3),
            weights=config.weights,
        )
    if config.weights is None:
        # From scratch, Keras Applications' momentum 0.999 leaves the
        # moving statistics far behind the weights for the first thousands
        # of steps, so short runs evaluate with stale normalisation.
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    if config.feature_layer is None:
        return backbone
    try:
        features = backbones.get_layer(backbone, config.feature_layer).output
    except ValueError as error:
        raise ValueError(_feature_layer_message(backbone, config)) from error
    return keras.Model(backbone.inputs, features, name=backbone.name)


def _feature_layer_message(backbone, config):
    """Why `config.feature_layer` is not in `backbone`, and what would be."""
    final = backbone.output.shape[1]
    # The last layer of each grid size: the stage outputs a user cuts at.
    # Padding layers only pad; squeeze-excite pools fall below `final`.
    # Named as in every build (auto-generated names as in a fresh process).
    names = backbones.canonical_layer_names(backbone)
    stage_ends = {}
    for layer, name in zip(backbone.layers, names):
        if isinstance(layer, (keras.layers.InputLayer,
                              keras.layers.ZeroPadding2D)):
            continue
        shape = getattr(layer.output, "shape", ())
        if len(shape) == 4 and final <= shape[1] < config.image_size:
            stage_ends[tuple(shape[1:3])] = name
    stages = ", ".join(
        f"{name!r} ({height}x{width})"
        for (height, width), name in stage_ends.items()
    )
    # A high cutoff: only typos, not other layers of similar names.
    close = difflib.get_close_matches(
        config.feature_layer, names, cutoff=0.85,
    )
    hint = f". Did you mean {close}?" if close else "."
    return (
        f"ExperimentConfig: argument `feature_layer` must be None or a "
        f"layer of {config.backbone}; received {config.feature_layer!r}"
        f"{hint} Pass feature_layer=None (`--feature-layer none`) for its "
        f"last feature map, or the last layer of one of its stages (token "
        f"grid for {config.image_size}x{config.image_size} images): "
        f"{stages}."
    )


def check_trainable(config):
    """Raise `ValueError` unless `config.feature_layer` is a layer of
    `config.backbone`, `config.patch_size` divides its feature map and a
    weights file `config.weights` exists.

    Builds the backbone's architecture (no weights are loaded or
    downloaded), so a run fails before it writes or loads anything. The
    message of a missing layer lists the layers that end each stage of the
    backbone.
    """
    if config.weights not in (
        None, "imagenet", BENCHMARK_WEIGHTS
    ) and not os.path.isfile(config.weights):
        raise ValueError(
            f"ExperimentConfig: argument `weights` names no file: "
            f"{config.weights!r}."
        )
    height, width = _feature_grid(config.backbone, config.image_size,
                                  config.feature_layer)
    if height % config.patch_size or width % config.patch_size:
        source = (repr(config.feature_layer) if config.feature_layer
                  else f"{config.backbone}'s last feature map")
        raise ValueError(
            f"ExperimentConfig: argument `patch_size` must divide the "
            f"feature map's height and width ({height}x{width} at "
            f"{config.image_size}x{config.image_size} images from "
            f"{source}); received {config.patch_size!r}."
        )


# Cached: `ersm train` checks before `train_pair`, which checks again. The
# grid depends on these arguments only; `patch_size` is checked uncached.
@functools.lru_cache(maxsize=None)
def _feature_grid(backbone, image_size, feature_layer):
    """The feature map's (height, width), from the architecture alone."""
    features = build_backbone(ExperimentConfig(
        backbone=backbone, image_size=image_size,
        feature_layer=feature_layer, weights=None,
    )).output
    return tuple(features.shape[1:3])


def build_pair(config, num_classes):
    """(baseline, ersm): the same architecture and initial weights, except
    for the EnergyMask before the pooled head."""
    keras.utils.set_random_seed(config.seed)
    baseline_backbone = build_backbone(config)
    if config.freeze_backbone:
        baseline_backbone.trainable = False
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(
        baseline_backbone.output
    )
    baseline = keras.Model(
        baseline_backbone.inputs,
        keras.layers.Dense(
            num_classes, activation="softmax", dtype="float32",
            name="predictions",
        )(pooled),
        name="baseline",
    )
    keras.utils.set_random_seed(config.seed)
    ersm = models.build_classifier(
        build_backbone(config),
        num_classes,
        freeze_backbone=config.freeze_backbone,
        **config.mask_kwargs(),
    )
    return baseline, keras.Model(ersm.inputs, ersm.outputs, name="ersm")


def train(model, data, config, output_dir, *, resume=False, verbose=1,
          tensorboard=None):
    """Fit `model` on `data["train"]`; history and backups in `output_dir`.

    `data["order"]`, when given, is the `EpochOrder` of `data["train"]`.
    With a folder `tensorboard`, `keras.callbacks.TensorBoard` logs the
    training to `tensorboard/<model name>`, and for a model with masks
    `keras_ersm.callbacks.MaskTensorBoard` its masks of the first
    `config.num_examples_shown` images of `data["test"]`.

    With `resume=True` training continues from the last backup in
    `output_dir/backup_<model name>` (written every epoch by
    `keras.callbacks.BackupAndRestore`) instead of restarting. The backup
    outlives `fit`: `train_pair` removes it once the model is saved, so
    that a kill while saving loses nothing.
    """
    steps_per_epoch = int(data["train"].cardinality())
    if steps_per_epoch < 1:
        steps_per_epoch = sum(1 for _ in data["train"])
    recipe = models.authors_recipe(
        max(1, steps_per_epoch * config.epochs),
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    model.compile(**recipe)
    backup_dir = _backup_dir(output_dir, model.name)
    if resume:
        _discard_unusable_first_backup(backup_dir)
    else:
        _check_not_interrupted(output_dir, model.name)
    callbacks = [
        # Before the backup: a run killed once a backup exists has logged
        # every epoch that the backup holds. Without a backup the model
        # starts from scratch, and so does its log.
        keras.callbacks.CSVLogger(
            os.path.join(output_dir, f"history_{model.name}.csv"),
            append=resume and os.path.isdir(backup_dir),
        ),
        # Left behind by an interrupted run, and kept after fit until the
        # model is saved (`train_pair`). Per epoch: Keras restarts a
        # resumed epoch from its first batch, so only epoch-boundary
        # backups resume exactly. The double checkpoint is the fallback for
        # a backup cut off while written.
        keras.callbacks.BackupAndRestore(
            backup_dir, save_freq="epoch", double_checkpoint=True,
            delete_checkpoint=False,
        ),
    ]
    if "order" in data:
        callbacks.append(data["order"])
    if tensorboard is not None:
        log_dir = os.path.join(tensorboard, model.name)
        callbacks.append(
            keras.callbacks.TensorBoard(log_dir, write_graph=False)
        )
        if models.energy_masks(model):
            images, *_ = next(iter(
                data["test"].unbatch().batch(config.num_examples_shown)
            ))
            callbacks.append(MaskTensorBoard(log_dir, images))
    history = model.fit(
        data["train"], epochs=config.epochs, callbacks=callbacks,
        verbose=verbose,
        # The dataset is shuffled (`EpochOrder`); fit would warn that it
        # ignores its default shuffle=True for a tf.data.Dataset.
        shuffle=False,
    )
    return {key: [float(v) for v in values]
            for key, values in history.history.items()}


def _backup_dir(output_dir, model_name):
    return os.path.join(output_dir, f"backup_{model_name}")


def _check_not_interrupted(output_dir, model_name):
    """Raise `RunFolderError` if `output_dir` holds an interrupted
    training of `model_name`."""
    backup_dir = _backup_dir(output_dir, model_name)
    if os.path.isdir(backup_dir):
        raise RunFolderError(
            f"{backup_dir} holds the backup of an interrupted run: resume "
            "it (`--resume` of `ersm train` or `ersm demo`, with the run's "
            "options; resume=True in Python), or choose a new output "
            "folder."
        )


def _discard_unusable_first_backup(backup_dir):
    """Remove a first backup that a kill cut off while it was written.

    Keras writes the weights, then the epoch in `training_metadata.json`;
    later backups fall back to the previous epoch's copy (the double
    checkpoint), but the first has none, and without its epoch Keras would
    train the restored weights from epoch 0 again.
    """
    weights = os.path.join(backup_dir, "latest.weights.h5")
    if not os.path.exists(weights) or os.path.exists(weights + ".bkp"):
        return
    metadata = os.path.join(backup_dir, "training_metadata.json")
    try:
        with h5py.File(weights, "r"):
            pass
        with open(metadata) as file:
            json.load(file)
    except (OSError, ValueError):
        shutil.rmtree(backup_dir)


def read_history(output_dir, name):
    """The per-epoch history that `train` logged for model `name`.

    The log keeps every attempt's rows: a run killed after logging an
    epoch but before backing it up logs that epoch again when resumed.
    The last row of each epoch is the one the saved model went through.
    """
    path = os.path.join(output_dir, f"history_{name}.csv")
    with open(path) as file:
        header, *rows = [line.strip().split(",") for line in file if line.strip()]
    epoch = header.index("epoch")
    last = {int(row[epoch]): row for row in rows}
    rows = [last[index] for index in sorted(last)]
    # CSVLogger adds "NA" val_* columns even when there is no validation.
    return {
        key: [float(row[index]) for row in rows]
        for index, key in enumerate(header)
        if key != "epoch" and any(row[index] != "NA" for row in rows)
    }


def grey_fill_value(backbone):
    """A mid-grey pixel in the backbone's input space, one value per channel.

    Per channel, not averaged: caffe-mode preprocessing (BGR, mean
    subtracted) and torch-mode (standardised) give grey a different value
    in each channel, and their mean is a coloured occluder.
    """
    grey = np.full((1, 1, 1, 3), 127.5, np.float32)
    return np.asarray(get_preprocessing(backbone)(grey))[0, 0, 0].tolist()


def _annotate(result, split, seed):
    result = dict(result)
    result.setdefault("split", split)
    result.setdefault("seed", seed)
    return result


def evaluate_pair(baseline, ersm, data, config, *, phases=None):
    """Every claim of the paper, measured on both models; see `METRICS_SCHEMA`
    in `keras_ersm.report` for the layout of the returned dict.

    `phases` (a `keras_ersm.progress.Phases`) announces each measurement,
    which then shows a progress bar with `phases.verbose`; without it
    nothing is printed.
    """
    verbose = 0 if phases is None else phases.verbose
    seed = config.seed
    test = data["test"]
    has_masks = len(test.element_spec) == 3
    test_split = TEST_SPLITS.get(config.dataset, "test")
    images_labels = test.map(lambda *example: example[:2])
    metrics = {}
    chance = 1.0 / NUM_CLASSES[config.dataset]
    with _phase(phases, "Measuring accuracy (baseline, then ERSM)"):
        metrics["accuracy"] = {
            name: _annotate(
                {**evaluation.top1_accuracy(model, images_labels,
                                            verbose=verbose),
                 "chance_accuracy": chance},
                test_split, seed,
            )
            for name, model in (("baseline", baseline), ("ersm", ersm))
        }
    with _phase(phases, "Measuring sparsity (ERSM)"):
        metrics["sparsity"] = _annotate(
            evaluation.sparsity_statistics(ersm, images_labels,
                                           verbose=verbose),
            test_split, seed,
        )
    metrics["deletion"] = {}
    for direction, most_first in (
        ("least_important_first", False),
        ("most_important_first", True),
    ):
        with _phase(phases, f"Measuring deletion, "
                    f"{direction.replace('_', ' ')} (areas of the learned, "
                    "magnitude, random and Grad-CAM rankings)"):
            metrics["deletion"][direction] = _annotate(
                evaluation.deletion_curves(
                    ersm, images_labels,
                    orders=("learned", "magnitude", "random", "gradcam"),
                    most_important_first=most_first,
                    steps=config.deletion_steps, seed=seed,
                    baseline=baseline, verbose=verbose,
                ),
                test_split, seed,
            )
    fill = grey_fill_value(config.backbone)
    with _phase(phases, "Measuring occlusion by grey squares (baseline, "
                "then ERSM)"):
        metrics["occlusion"] = {
            name: _annotate(
                evaluation.occlusion_robustness(
                    model, images_labels, config.occlusion_fractions,
                    fill_value=fill, seed=seed, verbose=verbose,
                ),
                test_split, seed,
            )
            for name, model in (("baseline", baseline), ("ersm", ersm))
        }
    if has_masks:
        with _phase(phases, "Measuring occlusion of the object's box "
                    "(baseline, then ERSM)"):
            metrics["object_occlusion"] = {
                name: _annotate(
                    evaluation.object_occlusion(model, test, region="box",
                                                fill_value=fill,
                                                verbose=verbose),
                    test_split, seed,
                )
                for name, model in (("baseline", baseline), ("ersm", ersm))
            }
        with _phase(phases, "Measuring where the kept tokens fall (ERSM)"):
            metrics["object_tokens"] = _annotate(
                evaluation.object_token_statistics(ersm, test,
                                                   verbose=verbose),
                test_split, seed,
            )
        maps = {
            "ersm_mask": (evaluation.ersm_maps(ersm), False),
            "gradcam_baseline": (evaluation.gradcam_maps(baseline), True),
            "magnitude_ersm": (evaluation.magnitude_maps(ersm), True),
            "whole_image": (evaluation.whole_image_maps(), False),
        }
        with _phase(phases, "Measuring localisation (ERSM mask, baseline "
                    "Grad-CAM, feature magnitude, whole image)"):
            metrics["localization"] = {
                name: _annotate(
                    evaluation.localization_scores(
                        map_fn, test, normalize=normalize, verbose=verbose,
                    ),
                    test_split, seed,
                )
                for name, (map_fn, normalize) in maps.items()
            }
    if "test_shuffled" in data:
        shuffled = data["test_shuffled"].map(lambda *example: example[:2])
        with _phase(phases, "Measuring background reliance (test, then "
                    "test_shuffled; baseline, then ERSM)"):
            metrics["background"] = {
                name: _annotate(
                    evaluation.background_reliance(
                        model, images_labels, shuffled, verbose=verbose,
                    ),
                    "test vs test_shuffled", seed,
                )
                for name, model in (("baseline", baseline), ("ersm", ersm))
            }
    return metrics


def count_phases(config, command):
    """How many phases `ersm <command>` announces for a run of `config`.

    A new phase (`with _phase(phases, name):`) is counted here.

    Args:
        config: the run's `ExperimentConfig`.
        command: `"demo"`, `"train"` or `"evaluate"`.

    Returns:
        The `total` of the run's `keras_ersm.progress.Phases`.
    """
    # Pre-training the backbone where needed, building the data, then
    # training (or keeping) each model.
    training = 3 + (config.weights == BENCHMARK_WEIGHTS)
    # Accuracy, sparsity, deletion both ways, occlusion, with object masks
    # the object's box and localisation, on the benchmark background
    # reliance; then the report.
    evaluating = (
        5 + 3 * (config.dataset in MASKED_DATASETS)
        + (config.dataset == BENCHMARK_NAME) + 1
    )
    counts = {
        "demo": training + 1 + evaluating,  # and the export
        "train": training,
        "evaluate": 1 + evaluating,  # loading the run first
    }
    validation.check_choice("count_phases", "command", command,
                            list(counts))
    return counts[command]


def _phase(phases, name):
    """`phases.phase(name)`, or nothing to announce without `phases`."""
    return contextlib.nullcontext() if phases is None else phases.phase(name)


def example_maps(baseline, ersm, data, count):
    """Images, object masks, ERSM masks and baseline Grad-CAM for figures."""
    images, labels, *rest = next(iter(data["test"].unbatch().batch(count)))
    return {
        "images": np.asarray(images),
        "labels": np.asarray(labels),
        "object_masks": np.asarray(rest[0]) if rest else None,
        "ersm_mask": np.asarray(evaluation.ersm_maps(ersm)(images, labels)),
        "gradcam": np.asarray(
            evaluation.normalize_maps(
                evaluation.gradcam_maps(baseline)(images, labels)
            )
        ),
    }


def save_config(config, output_dir):
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "config.json"), "w") as file:
        json.dump(config.to_dict(), file, indent=2)


def load_config(output_dir):
    """The `ExperimentConfig` a run folder was trained with."""
    path = os.path.join(output_dir, "config.json")
    if not os.path.exists(path):
        raise RunFolderError(
            f"{output_dir} is not a run folder (no config.json): run "
            f"`ersm train --output {output_dir}` first."
        )
    try:
        with open(path) as file:
            values = json.load(file)
        if not isinstance(values, dict):
            raise ValueError(f"a JSON {type(values).__name__}, not an object")
        return ExperimentConfig(**values)
    except (OSError, ValueError, TypeError) as error:
        raise RunFolderError(
            f"{path} is not the config of a run ({error}); it is written by "
            "`ersm train`: restore it, or train into another folder."
        ) from None


def train_pair(config, output_dir, *, resume=False, verbose=1,
               phases=None, tensorboard=None):
    """Train the baseline and the ERSM model; save both as `.keras`.

    With `resume=True`, a model whose `.keras` file exists is kept as it
    is, and an interrupted one continues from its last backup; options
    other than the run's are an error that lists them. A feature layer
    that the backbone lacks, or a `patch_size` that does not divide its
    feature map, fails before anything is written or loaded.

    `phases` (a `keras_ersm.progress.Phases`) announces building the data
    and training each model; `verbose` is `fit`'s.
    With a folder `tensorboard`, both trainings log to it (see `train`).

    Returns:
        `(baseline, ersm, histories, data)`.
    """
    if not output_dir:
        raise RunFolderError("The output folder is an empty path: name a "
                             "folder.")
    _check_not_a_file(output_dir, "output folder")
    if resume:
        if not os.path.exists(os.path.join(output_dir, "config.json")):
            raise RunFolderError(
                f"resume: {output_dir} holds no run to resume (no "
                "config.json); start the run without `--resume`."
            )
        saved = load_config(output_dir)
        if saved != config:
            differences = "; ".join(
                f"{field.name}: {getattr(saved, field.name)!r} in the run, "
                f"{getattr(config, field.name)!r} now"
                for field in dataclasses.fields(config)
                if getattr(saved, field.name) != getattr(config, field.name)
            )
            raise RunFolderError(
                f"resume: the options differ from those of the run in "
                f"{output_dir} ({differences}); resume with the same "
                "options."
            )
    else:
        for name in ("baseline", "ersm"):
            _check_not_interrupted(output_dir, name)
        _check_no_results(output_dir)
    check_trainable(config)
    make_folder(output_dir, "output folder")
    if config.weights == BENCHMARK_WEIGHTS:
        with _phase(phases, "Pre-training the backbone (cached after the "
                    "first run)"):
            pretrain_backbone(config, verbose=verbose)
    with _phase(phases, "Building the data"):
        data = load_data(config)
        baseline, ersm = build_pair(config, NUM_CLASSES[config.dataset])
    # Only now: a run that failed before training leaves the folder's
    # config (and the run it describes) as it was.
    save_config(config, output_dir)
    histories = {}
    trained = []
    for model, title in ((baseline, "the baseline"),
                         (ersm, "the ERSM model")):
        path = os.path.join(output_dir, f"{model.name}.keras")
        if resume and os.path.exists(path):
            # Finished before the interruption: keep it as it was saved.
            with _phase(phases, f"Keeping {title} trained before"):
                model = keras.saving.load_model(path)
        else:
            with _phase(phases, f"Training {title}"):
                train(model, data, config, output_dir, resume=resume,
                      verbose=verbose, tensorboard=tensorboard)
                _save_whole(model, path)
        # Only once the model is saved (a kill while saving resumes from
        # the backup of the last epoch).
        shutil.rmtree(_backup_dir(output_dir, model.name),
                      ignore_errors=True)
        # The log, not fit's History, spans the epochs of every attempt.
        histories[model.name] = read_history(output_dir, model.name)
        trained.append(model)
    return trained[0], trained[1], histories, data


# What a run leaves once it has trained a model; a new run would overwrite
# some and leave the others describing the old run.
RESULT_FILES = ("baseline.keras", "ersm.keras", "metrics.json")


def _check_no_results(output_dir):
    found = [name for name in RESULT_FILES
             if os.path.exists(os.path.join(output_dir, name))]
    if not found:
        return
    # Without its config the run cannot be resumed.
    resume = (
        "resume it (`--resume` with the run's options; resume=True in "
        "Python) to keep and complete that run, or "
        if os.path.exists(os.path.join(output_dir, "config.json")) else ""
    )
    raise RunFolderError(
        f"{output_dir} holds the results of a run ({', '.join(found)}): "
        f"{resume}choose another output folder (or delete this one)."
    )


def _check_not_a_file(path, what):
    """`RunFolderError` if a file is where the folder `path` (named as
    `what`) should be."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunFolderError(
            f"{path} is a file, not a folder: choose another {what}."
        )


def make_folder(path, what):
    """Create the folder `path` (and its parents); `RunFolderError` if it
    cannot be, naming it as `what`."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise RunFolderError(
            f"{path} cannot be used as the {what} ({error.strerror}): "
            "choose another folder."
        ) from None


def _save_whole(model, path):
    """`model.save(path)`, so that `path` appears complete or not at all:
    a kill while writing leaves a partial file under another name, which
    `--resume` neither loads nor needs."""
    folder, name = os.path.split(path)
    partial = os.path.join(folder, f".partial_{name}")
    model.save(partial)
    os.replace(partial, path)


def _load_models(output_dir, names=("baseline", "ersm")):
    """The trained models `names` of a run folder."""
    paths = [os.path.join(output_dir, f"{name}.keras") for name in names]
    for path in paths:
        if not os.path.exists(path):
            raise RunFolderError(
                f"{path} is missing: train the run first with "
                f"`ersm train --output {output_dir}`."
            )
    return [keras.saving.load_model(path) for path in paths]


def evaluate_and_report(baseline, ersm, data, config, output_dir,
                        histories=None, started=None, *, phases=None):
    """Measure every claim on both models and write the report; `phases`
    announces each measurement and the report (see `evaluate_pair`)."""
    from keras_ersm import report

    started = time.time() if started is None else started
    metrics = evaluate_pair(baseline, ersm, data, config, phases=phases)
    metrics["training"] = histories or {
        name: read_history(output_dir, name) for name in ("baseline", "ersm")
    }
    metrics["config"] = config.to_dict()
    metrics["mask_layers"] = [
        layer.name for layer in models.energy_masks(ersm)
    ]
    metrics["runtime_seconds"] = round(time.time() - started, 1)
    with _phase(phases, "Writing the report"):
        examples = example_maps(baseline, ersm, data,
                                config.num_examples_shown)
        return report.write_report(metrics, examples, output_dir)


def evaluate_run(output_dir, *, phases=None):
    """`ersm evaluate`: the report of a trained run folder; `phases`
    announces loading the run, each measurement and the report."""
    config = load_config(output_dir)
    with _phase(phases, "Loading the run (models and data)"):
        baseline, ersm = _load_models(output_dir)
        data = load_data(config)
    return evaluate_and_report(
        baseline, ersm, data, config, output_dir, phases=phases
    )


def export_run(output_dir, path, *, phases=None):
    """`ersm export`: the run's ERSM model as a SavedModel at `path`;
    `phases` announces the export."""
    _check_not_a_file(path, "SavedModel folder")
    with _phase(phases, "Exporting the ERSM model"):
        (ersm,) = _load_models(output_dir, ("ersm",))
        make_folder(path, "SavedModel folder")
        export(ersm, path)
    return path


def run_experiment(config, output_dir, *, resume=False, verbose=1,
                   phases=None, tensorboard=None):
    """Train, evaluate, export and report: `ersm demo`.

    Writes into `output_dir`: `config.json`, `metrics.json`, `report.md`,
    `report.html`, PNG figures, `baseline.keras`, `ersm.keras`, the ERSM
    SavedModel in `saved_model/` and the training histories.

    `phases` (a `keras_ersm.progress.Phases` of
    `count_phases(config, "demo")`) announces every phase; `verbose` is
    `fit`'s; `tensorboard`, a folder for TensorBoard logs (see `train`).

    Returns:
        The metrics dict written to `metrics.json`.
    """
    started = time.time()
    baseline, ersm, histories, data = train_pair(
        config, output_dir, resume=resume, verbose=verbose, phases=phases,
        tensorboard=tensorboard,
    )
    with _phase(phases, "Exporting the ERSM model"):
        export(ersm, os.path.join(output_dir, "saved_model"))
    return evaluate_and_report(
        baseline, ersm, data, config, output_dir, histories, started,
        phases=phases,
    )
