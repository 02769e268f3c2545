"""The ERSM benchmark: a tfds builder generated offline, with ground truth."""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from keras_ersm import validation
from keras_ersm.datasets import rendering

BENCHMARK_NAME = "ersm_benchmark"

# Split id used to seed each split; `test_shuffled` reuses the objects of
# `test` (same split id for the object generator) on other backgrounds.
_SPLIT_IDS = {"train": 0, "test": 1, "test_shuffled": 2, "pretrain": 3,
              "validation": 4}
# Splits whose background is drawn independently of the label.
_UNCORRELATED_SPLITS = ("test_shuffled", "pretrain")
# Fraction of the 1797 digit templates reserved for `train`, `pretrain` and
# `validation`;
# the rest are shared by `test` and `test_shuffled`, so no test object is
# seen in training.
_TRAIN_TEMPLATE_FRACTION = 2.0 / 3.0
# The background photos are resized once so that their shorter side is this
# multiple of the image size; crops (0.3-0.8 of it) are then always
# downscaled to the image. Only the smallest photo (chelsea, 300 px) is
# itself upscaled, for images over 75 px.
_PHOTO_SIDE_FACTOR = 4


# eq=False like tfds's BuilderConfig, which keeps configs hashable.
@dataclasses.dataclass(eq=False)
class ErsmBenchmarkConfig(tfds.core.BuilderConfig):
    """Configuration of the ERSM benchmark.

    Args:
        name: str, the config name used in `"ersm_benchmark/<name>"`.
        image_size: int, side of the square images and object masks.
        num_train: int, number of `train` examples.
        num_test: int, number of `test` examples, and of `test_shuffled`
            examples.
        num_pretrain: int, number of `pretrain` examples.
        num_validation: int, number of `validation` examples.
        correlation: float in `[0, 1]`, exact fraction of `train` and `test`
            examples whose background id equals their label.
        seed: int, the seed every random choice derives from.

    Example:

    >>> config = ErsmBenchmarkConfig(
    ...     name="96_strong", image_size=96, correlation=0.95
    ... )
    >>> builder = tfds.builder("ersm_benchmark", config=config)
    """

    image_size: int = 64
    num_train: int = 10000
    num_test: int = 2000
    num_pretrain: int = 6000
    num_validation: int = 1000
    correlation: float = 0.9
    seed: int = 0

    def __post_init__(self):
        caller = "ErsmBenchmarkConfig"
        if int(self.image_size) < 8:
            raise validation.invalid(caller, "image_size", "an integer >= 8",
                                     self.image_size)
        for name in ("num_train", "num_test", "num_pretrain",
                     "num_validation"):
            if getattr(self, name) < 1:
                raise validation.invalid(caller, name, "an integer >= 1",
                                         getattr(self, name))
        if not 0.0 <= self.correlation <= 1.0:
            raise validation.invalid(caller, "correlation",
                                     "a number in [0, 1]", self.correlation)

    def parameters(self):
        """The settings the data depends on, as stored with a build."""
        return {
            "image_size": int(self.image_size),
            "num_train": int(self.num_train),
            "num_test": int(self.num_test),
            "num_pretrain": int(self.num_pretrain),
            "num_validation": int(self.num_validation),
            "correlation": float(self.correlation),
            "seed": int(self.seed),
        }


class ErsmBenchmark(tfds.core.GeneratorBasedBuilder):
    """Digits on photographs whose background is correlated with the label.

    Each example is a handwritten digit, upsampled into a smooth silhouette
    of random scale (35-60% of the image side), position and bright colour,
    pasted on a random crop of one of ten photographs. In `train` and `test`
    exactly `correlation` of the examples (default 90%) show background id
    equal to their label, the others one of the nine other backgrounds
    uniformly. In `test_shuffled` the background is drawn uniformly and
    independently of the label (about 10% match by chance), and example `i`
    shows the same object as `test` example `i` (digit, scale, position and
    colour; the colour is replaced by its complement where it would not
    stand out from the new background, a few percent of examples). A model
    that reads backgrounds loses accuracy on `test_shuffled`; one that reads
    objects does not. `pretrain` draws other examples of the `train` digits,
    with backgrounds independent of the label: material for pre-training a
    backbone that encodes both the object and the scene, disjoint from the
    other splits. `validation` is correlated as `train` and `test` and draws
    other examples of the `train` digits (no test digit is used to choose
    anything), disjoint from the other splits: where thresholds of
    localisation maps are chosen, never on `test`.

    Features:
        image: uint8 `(S, S, 3)`.
        label: `ClassLabel`, the digit 0-9.
        object_mask: uint8 `(S, S, 1)`, 1 exactly on the object's pixels.
        background: `ClassLabel`, the background id, named after its photo.
        index: int64, the example's index in its split; `test` and
            `test_shuffled` examples with equal index show the same object
            (up to the colour complement above; tfds stores examples in a
            split-dependent order).

    Configs: `"64"` (default; 10000 train, 2000 test, 2000 test_shuffled,
    6000 pretrain, 1000 validation) and `"32"` (2000 / 500 / 500 / 2000 /
    500, for tests and quick demos). Build others
    with `ErsmBenchmarkConfig`. Generation is deterministic under the
    config's seed and needs no network.

    Provenance and licences:
        Objects: scikit-learn's bundled copy of the UCI "Optical Recognition
        of Handwritten Digits" test set (1797 8x8 images, E. Alpaydin and
        C. Kaynak, 1998), distributed with scikit-learn under its BSD-3-Clause
        licence; the UCI data is licensed CC BY 4.0. Two thirds of the digits
        are used only for `train`, the rest only for the test splits.
        Backgrounds, all bundled in the scikit-image wheel (`skimage.data`,
        no download), with the licences stated in its documentation:
        astronaut (NASA Great Images, public domain), brick (CC0Textures
        "Bricks25", CC0), camera (Lav Varshney, CC0), chelsea (Stefan van der
        Walt, CC0), coffee (Rachel Michetti, CC0), grass (CC0Textures, CC0),
        gravel (CC0Textures "Gravel04", CC0), hubble_deep_field (NASA,
        public domain), retina (Mikael Haggstrom, Wikimedia Commons, CC0),
        rocket (SpaceX, public domain). Greyscale images are replicated to
        three channels.

    Example:

    >>> import keras_ersm.datasets
    >>> ds = tfds.load("ersm_benchmark/32", split="test_shuffled")
    """

    VERSION = tfds.core.Version("1.3.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "The config's parameters are stored with the data "
                 "(metadata.json), so that a cached build is checked "
                 "against the config asking for it. Same examples.",
        "1.2.0": "A `pretrain` split (backgrounds independent of the "
                 "label, `train` digits). Other splits unchanged.",
        "1.3.0": "A `validation` split (correlated as `test`, `train` "
                 "digits), to choose thresholds on. Other splits "
                 "unchanged.",
    }
    BUILDER_CONFIGS = [
        ErsmBenchmarkConfig(
            name="64",
            description="64x64 images, 10000 train / 2000 test / 1000 "
                        "validation examples.",
        ),
        ErsmBenchmarkConfig(
            name="32",
            description="32x32 images, 2000 train / 500 test / 500 "
                        "validation examples.",
            image_size=32,
            num_train=2000,
            num_test=500,
            num_pretrain=2000,
            num_validation=500,
        ),
    ]
    DEFAULT_CONFIG_NAME = "64"

    def _info(self):
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            description=(
                "Handwritten digits pasted on photographs whose identity is "
                "correlated with the label, with pixel-exact object masks."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3)),
                    "label": tfds.features.ClassLabel(
                        names=[str(d) for d in range(rendering.NUM_CLASSES)]
                    ),
                    "object_mask": tfds.features.Image(shape=(size, size, 1)),
                    "background": tfds.features.ClassLabel(
                        names=list(rendering.BACKGROUND_NAMES)
                    ),
                    "index": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(self.builder_config.parameters()),
        )

    # tfds prints "Downloading and preparing dataset Unknown size
    # (download: Unknown size, ...)" before a build and "Dataset ...
    # downloaded and prepared" after it, from these two hooks of its
    # builders. Nothing is downloaded here: the builder prints nothing, and
    # `build_benchmark` says what it renders. Other datasets keep tfds's
    # lines.
    def _log_download_bytes(self):
        pass

    def _log_download_done(self):
        pass

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is rendered from bundled material.
        config = self.builder_config
        templates, labels = rendering.load_digit_templates()
        photos = rendering.load_background_photos(
            min_side=_PHOTO_SIDE_FACTOR * config.image_size
        )
        order = np.random.default_rng([config.seed, 1797]).permutation(
            len(labels)
        )
        num_train_templates = int(round(_TRAIN_TEMPLATE_FRACTION * len(order)))
        pools = {
            "train": order[:num_train_templates],
            "test": order[num_train_templates:],
        }
        return {
            "train": self._generate_examples(
                templates, labels, photos, pools["train"], "train"
            ),
            "test": self._generate_examples(
                templates, labels, photos, pools["test"], "test"
            ),
            "test_shuffled": self._generate_examples(
                templates, labels, photos, pools["test"], "test_shuffled"
            ),
            "pretrain": self._generate_examples(
                templates, labels, photos, pools["train"], "pretrain"
            ),
            "validation": self._generate_examples(
                templates, labels, photos, pools["train"], "validation"
            ),
        }

    def _generate_examples(self, templates, labels, photos, pool, split):
        config = self.builder_config
        size = config.image_size
        num = {"train": config.num_train,
               "pretrain": config.num_pretrain,
               "validation": config.num_validation}.get(split,
                                                        config.num_test)
        # `test_shuffled` draws the same objects as `test`.
        object_split = "test" if split == "test_shuffled" else split
        object_seed = [config.seed, _SPLIT_IDS[object_split]]
        choice_rng = np.random.default_rng(object_seed)
        indices = choice_rng.choice(pool, size=num, replace=True)
        example_labels = labels[indices]
        background_rng = np.random.default_rng(
            [config.seed, _SPLIT_IDS[split], 1]
        )
        if split in _UNCORRELATED_SPLITS:
            backgrounds = background_rng.integers(
                0, len(photos), size=num, dtype=np.int64
            )
        else:
            backgrounds = rendering.assign_backgrounds(
                example_labels, config.correlation, background_rng
            )
        for i in range(num):
            image, object_mask = rendering.render_example(
                templates[indices[i]],
                photos[backgrounds[i]],
                size,
                object_rng=np.random.default_rng(object_seed + [i, 0]),
                background_rng=np.random.default_rng(
                    [config.seed, _SPLIT_IDS[split], i, 1]
                ),
            )
            yield i, {
                "image": image,
                "label": int(example_labels[i]),
                "object_mask": object_mask[..., None].astype(np.uint8),
                "background": int(backgrounds[i]),
                "index": i,
            }
