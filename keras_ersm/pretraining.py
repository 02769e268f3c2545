"""Pre-training a backbone on the benchmark, cached between runs.

The paper masks the frozen features of an ImageNet backbone: features that
already encode objects and scenes, which the mask can select but not reshape.
Offline there are no ImageNet weights, so `pretrained_benchmark_backbone`
makes the equivalent on the benchmark's own material: a backbone
(`BenchmarkConvNet`, or a Keras Applications model cut at a layer whose
tokens are local, `backbones.LOCAL_FEATURE_LAYERS`) trained on the
`pretrain` split (digits of the `train` pool on backgrounds
drawn independently of the label, no image of any other split) to tell both
the digit and the background photo, so that its features encode the object
and the scene alike. A model then trained on the 90%-correlated `train`
split on top of these frozen features can lean on either.

The digit head pools by global maximum and the background head by global
average: a digit covers a few tokens and the scene all of them (with
average pooling the digit head stayed at chance).
"""

import hashlib
import json
import os

import keras

from keras_ersm import backbones
from keras_ersm.datasets import BENCHMARK_NAME
from keras_ersm.datasets import load_benchmark
from keras_ersm.datasets.rendering import BACKGROUND_NAMES
from keras_ersm.datasets.rendering import NUM_CLASSES

BACKBONE = "BenchmarkConvNet"
# Bump when the architecture or the recipe changes: cached weights of an
# older recipe are then not reused.
RECIPE_VERSION = 1


def cache_dir():
    """Where pre-trained weights are kept: `$KERAS_ERSM_CACHE`, else
    `$KERAS_HOME/keras_ersm` (`~/.keras/keras_ersm`)."""
    if os.environ.get("KERAS_ERSM_CACHE"):
        return os.environ["KERAS_ERSM_CACHE"]
    home = os.environ.get("KERAS_HOME", os.path.join("~", ".keras"))
    return os.path.expanduser(os.path.join(home, "keras_ersm"))


def _weights_path(backbone, settings, directory):
    key = hashlib.sha256(
        json.dumps(settings, sort_keys=True).encode()
    ).hexdigest()[:16]
    return os.path.join(directory, f"{backbone.lower()}_{key}.weights.h5")


def pretraining_model(backbone):
    """`backbone` with a digit head (global max pooling) and a background
    head (global average pooling), both softmax."""
    features = backbone.output
    digit = keras.layers.Dense(NUM_CLASSES, activation="softmax",
                               name="digit")(
        keras.layers.GlobalMaxPooling2D(name="digit_pool")(features)
    )
    background = keras.layers.Dense(len(BACKGROUND_NAMES),
                                     activation="softmax", name="background")(
        keras.layers.GlobalAveragePooling2D(name="background_pool")(features)
    )
    return keras.Model(backbone.input, [digit, background],
                       name="pretraining")


def pretrained_benchmark_backbone(image_size=64, *, backbone=BACKBONE,
                                  feature_layer=None, epochs=16,
                                  batch_size=64, learning_rate=2e-3, seed=0,
                                  num_examples=None, data_dir=None,
                                  directory=None, verbose=1):
    """A backbone pre-trained on the benchmark's `pretrain` split.

    Trained once per setting and cached as a weights file in `directory`;
    later calls with the same settings load it. Only the backbone up to
    `feature_layer` is built and trained: the layers after it would not be
    used.

    Args:
        image_size: int, side of the images.
        backbone: one of `keras_ersm.backbones.BACKBONES`, any case.
        feature_layer: None for the backbone's last feature map, or the
            layer to cut it at (`keras_ersm.backbones.cut`), e.g.
            `backbones.LOCAL_FEATURE_LAYERS[backbone]`.
        epochs, batch_size, learning_rate: the recipe (Adam, cosine decay).
        seed: int, seeds the initialisation and the data order.
        num_examples: None for the whole split, or its first n examples.
        data_dir: the tfds data directory of the benchmark.
        directory: None for `cache_dir()`, or the folder of the cache.
        verbose: `fit`'s verbosity.

    Returns:
        `(backbone, info)`: the backbone, cut at `feature_layer` (not
        frozen; `build_classifier` freezes it) and a dict with the weights
        file `path`, whether it was `cached`, the pre-training `settings`
        and the last epoch's `train_accuracy` on the digit and the
        background.
    """
    name = backbones.canonical_name(backbone,
                                    "`pretrained_benchmark_backbone`",
                                    "backbone")
    settings = dict(
        recipe=RECIPE_VERSION, image_size=int(image_size), epochs=int(epochs),
        batch_size=int(batch_size), learning_rate=float(learning_rate),
        seed=int(seed), num_examples=num_examples,
    )
    if feature_layer is not None:
        # Only then: the weights cached before cuts existed keep their key.
        settings["feature_layer"] = feature_layer
    directory = cache_dir() if directory is None else directory
    path = _weights_path(name, settings, directory)
    info_path = path[: -len(".weights.h5")] + ".json"
    if os.path.isfile(path) and os.path.isfile(info_path):
        model = _cut_backbone(name, image_size, feature_layer)
        model.load_weights(path)
        with open(info_path) as file:
            info = json.load(file)
        return model, dict(info, path=path, cached=True)
    keras.utils.set_random_seed(seed)
    model = _cut_backbone(name, image_size, feature_layer)
    if name != BACKBONE:
        # Keras Applications' momentum 0.999; BenchmarkConvNet's recipe
        # keeps Keras's default 0.99, as its cached weights were made.
        backbones.follow_batch_statistics(model)
    trainer = pretraining_model(model)
    split = "pretrain" if num_examples is None else f"pretrain[:{num_examples}]"
    data = load_benchmark(split, batch_size, image_size, backbone=name,
                          with_background=True, shuffle=True, seed=seed,
                          data_dir=data_dir)
    steps = max(1, int(data.cardinality()) * epochs)
    trainer.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(learning_rate, steps)
        ),
        loss=["sparse_categorical_crossentropy"] * 2,
        metrics=[["accuracy"], ["accuracy"]],
    )
    # The dataset is shuffled; fit would warn that it ignores its default
    # shuffle=True for a tf.data.Dataset.
    history = trainer.fit(data, epochs=epochs, verbose=verbose,
                          shuffle=False)
    accuracy = {
        head: float(history.history[f"{head}_accuracy"][-1])
        for head in ("digit", "background")
    }
    os.makedirs(directory, exist_ok=True)
    # Written to a temporary name first: a run killed while writing leaves
    # no half-written file under the name later runs load.
    model.save_weights(path + ".partial.weights.h5")
    os.replace(path + ".partial.weights.h5", path)
    info = dict(settings=settings, backbone=name, dataset=BENCHMARK_NAME,
                train_accuracy=accuracy)
    with open(info_path, "w") as file:
        json.dump(info, file, indent=2)
    return model, dict(info, path=path, cached=False)


def _cut_backbone(name, image_size, feature_layer):
    """The randomly initialised backbone `name`, cut at `feature_layer`."""
    backbone = backbones.create(name, (image_size, image_size, 3),
                                weights=None)
    return backbones.cut(backbone, feature_layer,
                         caller="`pretrained_benchmark_backbone`", name=name)
