"""The datasets a run may use, and its train and test splits."""

from keras_ersm.datasets import BENCHMARK_NAME
from keras_ersm.datasets import EpochOrder
from keras_ersm.datasets import SUPPORTED_DATASETS
from keras_ersm.datasets import benchmark_is_built
from keras_ersm.datasets import build_benchmark
from keras_ersm.datasets import load
from keras_ersm.datasets import load_benchmark
from keras_ersm.datasets import rendering

DATASETS = (BENCHMARK_NAME,) + tuple(SUPPORTED_DATASETS)
# Datasets whose test split comes with object masks.
OBJECT_MASK_DATASETS = (BENCHMARK_NAME,) + tuple(
    name for name, spec in SUPPORTED_DATASETS.items() if spec.object_mask_key
)
NUM_CLASSES = {
    BENCHMARK_NAME: rendering.NUM_CLASSES,
    "cifar10": 10,
    "oxford_iiit_pet": 37,
    "caltech_birds2011": 200,
    "food101": 101,
}
TEST_SPLITS = {"food101": "validation"}
# Where the thresholds of localisation maps are chosen: a split with object
# masks, disjoint from the test split. The benchmark renders one; the other
# datasets with object masks hold out the last tenth of `train`, which is
# then not trained on (`TRAIN_SPLITS`).
VALIDATION_SPLITS = {BENCHMARK_NAME: "validation", **{
    name: "train[90%:]" for name in OBJECT_MASK_DATASETS
    if name != BENCHMARK_NAME
}}
TRAIN_SPLITS = {name: "train[:90%]" for name in VALIDATION_SPLITS
                if name != BENCHMARK_NAME}


def _split(name, count):
    """The tfds split `name`, or the first `count` examples of the split it
    slices (`"train[:90%]"` and 50 give `"train[:50]"`)."""
    return name if count is None else f"{name.split('[')[0]}[:{count}]"


def benchmark_to_build(config):
    """Whether a run of `config` renders the offline benchmark before it
    can read it: the run reads the benchmark and the benchmark is not yet
    built in tfds's data directory."""
    return config.dataset == BENCHMARK_NAME and not benchmark_is_built(
        config.image_size
    )


def build_run_benchmark(config, verbose=False):
    """Render the offline benchmark that `load_data(config)` and the
    pre-training read, unless it is built; `verbose`: say what is rendered."""
    return build_benchmark(config.image_size, verbose=verbose)


def load_data(config):
    """The train, test (with object masks where available) and shuffled
    splits, the validation split where the dataset has object masks, and
    under `"order"` the `EpochOrder` that shuffles the train split: every
    model trained on it sees the same order in epoch e, also when resumed in
    another process.

    `config.test_examples` caps the test, shuffled and benchmark validation
    splits. On a dataset that holds out part of `train` for validation
    (`VALIDATION_SPLITS`), `config.train_examples` takes the first examples
    of `train` and must stay within its first 90% to keep the two disjoint.
    """
    order = EpochOrder()
    data = {"order": order}
    if config.dataset == BENCHMARK_NAME:

        def get(split, count, **kwargs):
            return load_benchmark(
                _split(split, count), config.batch_size, config.image_size,
                backbone=config.backbone, seed=config.seed, **kwargs,
            )

        data["train"] = get("train", config.train_examples, order=order)
        data["test"] = get("test", config.test_examples, with_object_masks=True)
        data["test_shuffled"] = get(
            "test_shuffled", config.test_examples, with_object_masks=True
        )
        data["validation"] = get("validation", config.test_examples,
                                 with_object_masks=True)
        return data

    def get(split, count, **kwargs):
        return load(
            config.dataset, _split(split, count), config.image_size,
            config.batch_size, backbone=config.backbone, seed=config.seed,
            **kwargs,
        )

    data["train"] = get(TRAIN_SPLITS.get(config.dataset, "train"),
                        config.train_examples, order=order)
    data["test"] = get(
        TEST_SPLITS.get(config.dataset, "test"),
        config.test_examples,
        with_object_masks=config.dataset in OBJECT_MASK_DATASETS,
    )
    if config.dataset in VALIDATION_SPLITS:
        # The whole held-out tenth: a slice cannot be capped again.
        data["validation"] = get(VALIDATION_SPLITS[config.dataset], None,
                                 with_object_masks=True)
    return data
