"""`ExperimentConfig`: everything that defines one run, and its presets."""

import dataclasses

from keras_ersm import backbones
from keras_ersm import presets
from keras_ersm import validation
from keras_ersm.datasets import BENCHMARK_NAME
from keras_ersm.experiment.data import DATASETS
from keras_ersm.initializers import DEFAULT_INITIAL_KEEP
from keras_ersm.initializers import initial_keep_bias
from keras_ersm.mask_options import AUTHORS
from keras_ersm.mask_options import MaskOptions

# Validation messages name the config ("ExperimentConfig: argument ...").
OWNER = "ExperimentConfig"
# `weights` of a backbone pre-trained on the benchmark (`pretraining`).
BENCHMARK_WEIGHTS = "benchmark"
# The `weights` that name no file.
NAMED_WEIGHTS = (None, "imagenet", BENCHMARK_WEIGHTS)
# The `feature_layer` resolved on construction: the backbone's layer of
# local tokens (`backbones.LOCAL_FEATURE_LAYERS`) with weights pre-trained
# on the benchmark, its last feature map otherwise.
AUTO_FEATURE_LAYER = "auto"
# What `feature_layer` follows when it is left to resolve.
_FEATURE_LAYER_FOLLOWS = ("backbone", "weights")


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
        feature_layer: `None` for the backbone's last feature map, the
            name of an earlier layer to cut the backbone at (a finer token
            grid for small images; see `check_trainable`), or `"auto"`
            (default): with `weights="benchmark"` the backbone's layer of
            local tokens (`keras_ersm.backbones.LOCAL_FEATURE_LAYERS`),
            else its last feature map. Stored resolved.
        weights: `None` (from scratch), `"imagenet"`, `"benchmark"`
            (the backbone pre-trained on the benchmark's `pretrain` split
            up to its feature layer, cached: `keras_ersm.pretraining`) or
            the path of a weights file.
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
        epoch_schedule: bool, False: the learning rate decays every step;
            True: once per epoch, as the authors' code steps PyTorch's
            `CosineAnnealingLR` (`keras_ersm.recipes.authors_recipe`).
        initial_keep: the keep value of every token at initialisation.
        authors_dynamics: bool, train the mask as the authors' code does
            (`keras_ersm.presets.AUTHORS_DYNAMICS`: a per-position bias
            frozen at +6, PyTorch's kernel initialisation); `initial_keep`
            is then unused.
        mask: the `MaskOptions` of the ERSM model's `EnergyMask`; by
            default the mask that learns (`MaskOptions()`).
            `from_dict`, `from_preset` and `to_dict` spell its fields flat,
            beside the others (as `config.json` and `ersm train` do).
        deletion_steps: points of each deletion curve; `None` for every
            number of deleted tokens.
        occlusion_fractions: image fractions covered by one grey square.
        num_examples_shown: images in the mask figure.
        seed: seeds initialisation, data order and every random ranking.
    """

    dataset: str = BENCHMARK_NAME
    backbone: str = "BenchmarkConvNet"
    feature_layer: str = AUTO_FEATURE_LAYER
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
    epoch_schedule: bool = False
    mask: MaskOptions = dataclasses.field(default_factory=MaskOptions)
    initial_keep: float = DEFAULT_INITIAL_KEEP
    authors_dynamics: bool = False
    deletion_steps: int = 40
    occlusion_fractions: tuple = (0.1, 0.2, 0.3, 0.4, 0.5)
    num_examples_shown: int = 6
    seed: int = 0

    def __post_init__(self):
        validation.check_choice(OWNER, "dataset", self.dataset,
                                list(DATASETS))
        self.backbone = backbones.canonical_name(self.backbone, OWNER,
                                                 "backbone")
        if self.feature_layer is not None and (
            not isinstance(self.feature_layer, str) or not self.feature_layer
        ):
            raise validation.invalid(OWNER, "feature_layer",
                                     "None or a layer name",
                                     self.feature_layer)
        # A file's existence is checked before training (`check_trainable`),
        # not here: a finished run whose weights file has moved
        # must still load its config to be evaluated.
        if self.weights not in NAMED_WEIGHTS and not (
            isinstance(self.weights, str) and self.weights.endswith(".h5")
        ):
            raise validation.invalid(
                OWNER, "weights", f"None, 'imagenet', '{BENCHMARK_WEIGHTS}' "
                "or the path of a weights file (.h5)", self.weights,
            )
        if self.weights == BENCHMARK_WEIGHTS and (
            self.dataset != BENCHMARK_NAME
        ):
            raise validation.invalid(
                OWNER, "weights", f"'{BENCHMARK_WEIGHTS}' only on dataset "
                f"'{BENCHMARK_NAME}' (dataset {self.dataset!r} given)",
                self.weights,
            )
        if self.feature_layer == AUTO_FEATURE_LAYER:
            self.feature_layer = (
                backbones.LOCAL_FEATURE_LAYERS.get(self.backbone)
                if self.weights == BENCHMARK_WEIGHTS else None
            )
        validation.check_bool(OWNER, "freeze_backbone",
                              self.freeze_backbone)
        validation.check_bool(OWNER, "epoch_schedule", self.epoch_schedule)
        validation.check_bool(OWNER, "authors_dynamics",
                              self.authors_dynamics)
        if not isinstance(self.mask, MaskOptions):
            raise validation.invalid(OWNER, "mask", "a MaskOptions",
                                     self.mask)
        # Keras Applications backbones reject inputs smaller than 32 x 32.
        validation.check_integer(OWNER, "image_size", self.image_size, 32)
        for name in ("batch_size", "epochs", "num_examples_shown",
                     "pretrain_epochs"):
            validation.check_integer(OWNER, name, getattr(self, name), 1)
        for name in ("train_examples", "test_examples", "deletion_steps",
                     "pretrain_examples"):
            validation.check_integer(OWNER, name, getattr(self, name), 1,
                                     optional=True)
        # numpy's seeding, under keras.utils.set_random_seed, is 32-bit.
        validation.check_integer(OWNER, "seed", self.seed, 0,
                                 maximum=2**32 - 1)
        validation.check_number(OWNER, "learning_rate", self.learning_rate,
                                "a number > 0", lambda v: v > 0)
        validation.check_number(OWNER, "weight_decay", self.weight_decay,
                                "a number >= 0", lambda v: v >= 0)
        # The score bias is the logit of initial_keep.
        validation.check_number(OWNER, "initial_keep", self.initial_keep,
                                "a number in (0, 1)", lambda v: 0 < v < 1)
        fractions = self.occlusion_fractions
        if (
            isinstance(fractions, (str, bytes))
            or not isinstance(fractions, (tuple, list))
            or not fractions
            or not all(validation.is_finite_number(f) and 0 < f <= 1
                       for f in fractions)
        ):
            raise validation.invalid(
                OWNER, "occlusion_fractions",
                "a non-empty sequence of numbers in (0, 1]", fractions,
            )
        # A tuple, also when read from JSON, so configs compare equal.
        self.occlusion_fractions = tuple(fractions)

    def mask_kwargs(self):
        """The ERSM model's `EnergyMask` arguments."""
        kwargs = dict(self.mask.to_dict(), seed=self.seed)
        if self.authors_dynamics:
            return dict(kwargs, **presets.AUTHORS_DYNAMICS)
        return dict(kwargs, score_bias_initializer=initial_keep_bias(
            self.initial_keep, self.mask.temperature
        ))

    @classmethod
    def from_dict(cls, values):
        """A config from its fields, the mask's spelt flat (`to_dict`) on
        top of `values["mask"]` (a `MaskOptions` or its dict) if given, else
        of the default mask."""
        values = dict(values)
        given = MaskOptions.pop_options(values)
        mask = values.pop("mask", None)
        if mask is None:
            mask = cls.__dataclass_fields__["mask"].default_factory()
        if isinstance(mask, MaskOptions):
            mask = mask.to_dict()
        if not isinstance(mask, dict):
            raise validation.invalid(OWNER, "mask",
                                     "a MaskOptions or its dict", mask)
        return cls(mask=MaskOptions(**{**mask, **given}, caller=OWNER),
                   **values)

    @classmethod
    def from_preset(cls, preset="learned", **overrides):
        """A config from one of `PRESETS`, with `overrides` on top."""
        validation.check_choice(OWNER, "preset", preset, list(PRESETS))
        return cls.from_dict({**PRESETS[preset], **overrides})

    def replace(self, **changes):
        """A copy with `changes`, as `from_dict` takes them: mask fields
        flat, or a whole new `mask`. A new backbone or weights without a
        `feature_layer` resolves it again (`"auto"`)."""
        values = self.to_dict()
        if "mask" in changes:
            MaskOptions.pop_options(values)
        if (any(name in changes for name in _FEATURE_LAYER_FOLLOWS)
                and "feature_layer" not in changes):
            values["feature_layer"] = AUTO_FEATURE_LAYER
        return type(self).from_dict({**values, **changes})

    def to_dict(self):
        """The fields as JSON values, the mask's flat among them."""
        values = dataclasses.asdict(self)
        values.update(values.pop("mask"))
        values["occlusion_fractions"] = list(self.occlusion_fractions)
        return values


# The authors' energy, in place of the default's.
_REFERENCE_MASK = AUTHORS.to_dict()


# Named starting points of a config (`ersm train/demo --preset`).
PRESETS = {
    # The default: the mask that learns, on the frozen pre-trained backbone.
    "learned": {},
    # The authors' layer on the same backbone and data.
    "reference": _REFERENCE_MASK,
    # The authors' layer trained as their code trains it: their dynamics
    # and recipe (batch 32, AdamW 1e-3, weight decay 1e-4, cosine decay
    # stepped once per epoch over 20 epochs).
    "authors": dict(_REFERENCE_MASK, authors_dynamics=True, batch_size=32,
                    learning_rate=1e-3, weight_decay=1e-4,
                    epoch_schedule=True, epochs=20),
    # The earlier default: MobileNetV2 trained from scratch with the mask.
    "scratch": dict(
        _REFERENCE_MASK, backbone="MobileNetV2",
        feature_layer="block_6_expand_relu", weights=None,
        freeze_backbone=False, epochs=8,
    ),
}


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
    config = ExperimentConfig.from_preset(preset, **{**values, **overrides})
    if config.mask.gate == "hard_concrete" and "initial_keep" not in overrides:
        # Hard-concrete gates take ~1,500 steps to leave a 0.95 start; the
        # quick run has 630, so it starts where the gates decide at once.
        # The start does not set where the mask ends (docs/mask_learning.md).
        config = config.replace(initial_keep=0.5)
    return config
