"""`ExperimentConfig`: everything that defines one run, and its presets.

Each field is a `keras_ersm.fields.option`, defined once with its default,
the values it accepts and its help; the class docstring's field list and
`ersm train`'s options (`command_line_arguments`) are generated from them.
"""

import argparse
import dataclasses

from keras_ersm import backbones
from keras_ersm import fields
from keras_ersm import presets
from keras_ersm import validation
from keras_ersm.datasets import BENCHMARK_NAME
from keras_ersm.experiment.data import DATASETS
from keras_ersm.fields import BOOL
from keras_ersm.fields import NON_NEGATIVE
from keras_ersm.fields import POSITIVE
from keras_ersm.fields import Domain
from keras_ersm.fields import integer
from keras_ersm.fields import option
from keras_ersm.initializers import DEFAULT_INITIAL_KEEP
from keras_ersm.initializers import INITIAL_KEEP
from keras_ersm.initializers import initial_keep_bias
from keras_ersm.mask_options import AUTHORS
from keras_ersm.mask_options import MaskOptions

# Validation messages name the config ("ExperimentConfig: argument ...").
CALLER = "ExperimentConfig"
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


def _any_case(valid, what):
    """An argparse type: one of `valid`, in any case, spelt as there."""
    by_lower = {name.lower(): name for name in valid}

    def parse(value):
        if value.lower() not in by_lower:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {value!r}; choose from: " + ", ".join(valid)
            )
        return by_lower[value.lower()]

    return parse


def _none_or_name(value):
    """An argparse type: 'none', in any case, for None."""
    return None if value.lower() == "none" else value


def _check_feature_layer(caller, name, value):
    if value is not None and (not isinstance(value, str) or not value):
        raise validation.invalid(caller, name, "None or a layer name", value)
    return value


def _check_weights(caller, name, value):
    # A file's existence is checked before training (`check_trainable`),
    # not here: a finished run whose weights file has moved must still load
    # its config to be evaluated.
    if value not in NAMED_WEIGHTS and not (
        isinstance(value, str) and value.endswith(".h5")
    ):
        raise validation.invalid(
            caller, name, f"None, 'imagenet', '{BENCHMARK_WEIGHTS}' or the "
            "path of a weights file (.h5)", value,
        )
    return value


def _check_mask(caller, name, value):
    if not isinstance(value, MaskOptions):
        raise validation.invalid(caller, name, "a MaskOptions", value)
    return value


_FRACTIONS = "a non-empty sequence of numbers in (0, 1]"


def _check_fractions(caller, name, value):
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, (tuple, list))
        or not value
        or not all(validation.is_finite_number(f) and 0 < f <= 1
                   for f in value)
    ):
        raise validation.invalid(caller, name, _FRACTIONS, value)
    # A tuple, also when read from JSON, so configs compare equal.
    return tuple(value)


_BACKBONE_NAMES = sorted(backbones.BACKBONES)
_BACKBONE = Domain(
    None,
    lambda caller, name, value: backbones.canonical_name(value, caller, name),
    {"type": _any_case(_BACKBONE_NAMES, "backbone")},
)
_FEATURE_LAYER = Domain(None, _check_feature_layer, {"type": _none_or_name})
_WEIGHTS = Domain(None, _check_weights, {"type": _none_or_name})
_COUNT = integer(1)
_OPTIONAL_COUNT = integer(1, optional=True)


@dataclasses.dataclass
class ExperimentConfig:
    """Everything that defines one run; saved as `config.json`.

    Every field is checked on construction (`ValueError` naming it); the
    feature layer, whether `patch_size` divides its grid (both need the
    backbone's architecture) and a weights file's existence are checked by
    `check_trainable`, before training.

    Attributes (and arguments, by keyword):
{fields}
    """

    dataset: str = option(
        BENCHMARK_NAME,
        fields.choice(list(DATASETS), parse=_any_case(DATASETS, "dataset")),
        f"one of {', '.join(DATASETS)}",
    )
    backbone: str = option(
        "BenchmarkConvNet", _BACKBONE,
        f"one of {', '.join(_BACKBONE_NAMES)}",
        doc="a `keras_ersm.backbones.BACKBONES` name, any case (stored as "
        "spelt there)",
    )
    feature_layer: str = option(
        AUTO_FEATURE_LAYER, _FEATURE_LAYER,
        "cut the backbone at this layer; 'none' for its last feature map; "
        "'auto': with '--weights benchmark' the backbone's layer of local "
        "tokens, else 'none' (an unknown layer is an error that lists the "
        "layers ending each stage)",
        doc="`None` for the backbone's last feature map, the name of an "
        "earlier layer to cut the backbone at (a finer token grid for small "
        "images; see `check_trainable`), or `\"auto\"`: with "
        "`weights=\"benchmark\"` the backbone's layer of local tokens "
        "(`keras_ersm.backbones.LOCAL_FEATURE_LAYERS`), else its last "
        "feature map. Stored resolved.",
    )
    weights: str = option(
        BENCHMARK_WEIGHTS, _WEIGHTS,
        "'none' (from scratch), 'imagenet', 'benchmark' (the backbone "
        "pre-trained on the benchmark up to its feature layer, cached) or a "
        "weights file",
        doc="`None` (from scratch), `\"imagenet\"`, `\"benchmark\"` (the "
        "backbone pre-trained on the benchmark's `pretrain` split up to its "
        "feature layer, cached: `keras_ersm.pretraining`) or the path of a "
        "weights file (.h5)",
    )
    freeze_backbone: bool = option(
        True, BOOL, "freeze the backbone (the authors' protocol)",
        doc="freeze the backbone: the authors freeze a pretrained one; from "
        "scratch it must train",
    )
    pretrain_epochs: int = option(
        16, _COUNT, "epochs of the 'benchmark' pre-training",
        doc="epochs of the `weights=\"benchmark\"` pre-training. One "
        "pre-trained backbone (seed 0) serves every run seed, as one set of "
        "ImageNet weights would",
    )
    pretrain_examples: int = option(None, _OPTIONAL_COUNT,
                                    "use the first N pre-training examples")
    # Keras Applications backbones reject inputs smaller than 32 x 32.
    image_size: int = option(64, integer(32), "square input side")
    batch_size: int = option(64, _COUNT, "batch size")
    epochs: int = option(20, _COUNT, "training epochs")
    train_examples: int = option(None, _OPTIONAL_COUNT,
                                 "use the first N training examples")
    test_examples: int = option(None, _OPTIONAL_COUNT,
                                "use the first N test examples")
    learning_rate: float = option(
        2e-3, POSITIVE, "AdamW initial learning rate",
        doc="AdamW's initial learning rate, with cosine decay (the authors' "
        "optimiser)",
    )
    weight_decay: float = option(1e-4, NON_NEGATIVE, "AdamW weight decay")
    epoch_schedule: bool = option(
        False, BOOL, "decay the learning rate once per epoch, as the "
        "authors' code, not every step",
        doc="decay the learning rate once per epoch, as the authors' code "
        "steps PyTorch's `CosineAnnealingLR` "
        "(`keras_ersm.recipes.authors_recipe`), not every step",
    )
    initial_keep: float = option(
        DEFAULT_INITIAL_KEEP, INITIAL_KEEP, "keep value of every token at "
        "initialisation",
    )
    authors_dynamics: bool = option(
        False, BOOL, "the authors' untrained per-position bias at +6 and "
        "kernel initialisation (initial keep unused)",
        doc="train the mask as the authors' code does "
        "(`keras_ersm.presets.AUTHORS_DYNAMICS`: a per-position bias frozen "
        "at +6, PyTorch's kernel initialisation); `initial_keep` is then "
        "unused",
    )
    # On the command line as its fields' own options.
    mask: MaskOptions = option(
        default_factory=MaskOptions, domain=Domain(None, _check_mask, None),
        doc="the `MaskOptions` of the ERSM model's `EnergyMask`; by default "
        "the mask that learns. `from_dict`, `from_preset` and `to_dict` "
        "spell its fields flat, beside the others (as `config.json` and "
        "`ersm train` do).", on_command_line=False,
    )
    deletion_steps: int = option(
        40, _OPTIONAL_COUNT, "points per deletion curve",
        doc="points of each deletion curve; `None` for every number of "
        "deleted tokens",
    )
    occlusion_fractions: tuple = option(
        (0.1, 0.2, 0.3, 0.4, 0.5),
        Domain(_FRACTIONS, _check_fractions, None),
        "image fractions covered by one grey square", on_command_line=False,
    )
    num_examples_shown: int = option(6, _COUNT, "images in the mask figure",
                                     on_command_line=False)
    # numpy's seeding, under keras.utils.set_random_seed, is 32-bit.
    seed: int = option(
        0, integer(0, maximum=2**32 - 1), "seed of everything random",
        doc="seeds initialisation, data order and every random ranking",
    )

    def __post_init__(self):
        for name, value in fields.checked_values(self, CALLER).items():
            setattr(self, name, value)
        if self.weights == BENCHMARK_WEIGHTS and (
            self.dataset != BENCHMARK_NAME
        ):
            raise validation.invalid(
                CALLER, "weights", f"'{BENCHMARK_WEIGHTS}' only on dataset "
                f"'{BENCHMARK_NAME}' (dataset {self.dataset!r} given)",
                self.weights,
            )
        if self.feature_layer == AUTO_FEATURE_LAYER:
            self.feature_layer = (
                backbones.LOCAL_FEATURE_LAYERS.get(self.backbone)
                if self.weights == BENCHMARK_WEIGHTS else None
            )

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
            raise validation.invalid(CALLER, "mask",
                                     "a MaskOptions or its dict", mask)
        return cls(mask=MaskOptions(**{**mask, **given}, caller=CALLER),
                   **values)

    @classmethod
    def from_preset(cls, preset="learned", **overrides):
        """A config from one of `PRESETS`, with `overrides` on top."""
        validation.check_choice(CALLER, "preset", preset, list(PRESETS))
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


def command_line_arguments():
    """`(flag, argparse keyword arguments)` of every field that has an
    option of `ersm train`, in order, the mask's as its `MaskOptions`
    fields' options."""
    for field in dataclasses.fields(ExperimentConfig):
        if field.name == "mask":
            yield from fields.command_line_arguments(MaskOptions)
        elif field.metadata["on_command_line"]:
            # The help as written: short, with its default but not its
            # accepted values.
            yield fields.command_line_argument(field, show_expected=False)


# Replaced, not formatted: docstrings hold braces of their own.
ExperimentConfig.__doc__ = ExperimentConfig.__doc__.replace(
    "{fields}\n", fields.docstring_arguments(ExperimentConfig, " " * 8) + "\n"
)
