"""Multi-worker training of an EnergyMask model with a custom training loop.

Keras 3's `model.fit` does not run under `tf.distribute.
MultiWorkerMirroredStrategy` (keras-team/keras#20585: a `PerReplica` value
reaches a conversion that expects a tensor). A training loop of our own,
with `strategy.run` inside a `tf.function`, runs fine: this script is one.

Every worker runs the same script; TF_CONFIG tells each its role:

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}' \
        python examples/multi_worker.py --steps 100

(index 1 on the second host). Without TF_CONFIG it trains on this process's
devices alone. Each worker feeds its own shard of every global batch;
gradients are summed across workers, so the losses are scaled to the global
batch: the cross-entropy with `tf.nn.compute_average_loss`, the energy loss
(a mean over the local batch, from `add_loss`) with
`tf.nn.scale_regularization_loss`. Weights stay identical on all workers;
each prints a checksum of them at the end.

The data is synthetic (a bright square on noise; the label is the quadrant
it lies in), so the example runs offline.
"""

import argparse
import hashlib
import json
import os

import keras
import numpy as np
import tensorflow as tf

from keras_ersm import EnergyMask

CLASSES = 4


def synthetic_data(size, image_size, seed):
    """Noise images with a bright square in one quadrant; label = quadrant."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.2, (size, image_size, image_size, 3))
    labels = rng.integers(0, CLASSES, size)
    half = image_size // 2
    side = max(half // 2, 1)
    for image, label in zip(images, labels):
        row = (label // 2) * half + rng.integers(0, half - side + 1)
        column = (label % 2) * half + rng.integers(0, half - side + 1)
        image[row : row + side, column : column + side] = 1.0
    return images.astype("float32"), labels.astype("int32")


def build_model(image_size, seed):
    inputs = keras.Input((image_size, image_size, 3))
    features = keras.layers.Conv2D(
        8,
        3,
        padding="same",
        activation="relu",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
    )(inputs)
    # Sigmoid gates are deterministic, so the run can be checked against
    # one worker value for value; the default hard-concrete gates draw
    # their noise per replica.
    masked = EnergyMask(
        patch_size=2,
        gate="sigmoid",
        score_kernel_initializer=keras.initializers.RandomNormal(
            seed=seed + 1
        ),
        name="mask",
    )(features)
    pooled = keras.layers.GlobalAveragePooling2D()(masked)
    outputs = keras.layers.Dense(
        CLASSES,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2),
    )(pooled)
    return keras.Model(inputs, outputs)


def make_dataset_fn(images, labels, global_batch_size):
    def dataset_fn(input_context):
        # Every worker builds the same data and keeps its own shard; the
        # per-worker batch is the worker's part of the global batch.
        batch_size = input_context.get_per_replica_batch_size(
            global_batch_size
        )
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        dataset = dataset.shard(
            input_context.num_input_pipelines, input_context.input_pipeline_id
        )
        return dataset.batch(batch_size, drop_remainder=True).repeat()

    return dataset_fn


def weights_checksum(model):
    """SHA-256 of all weights' bytes: equal iff the weights are bit-equal."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def train(strategy, steps, global_batch_size, image_size, learning_rate, seed):
    """Trains for `steps` global batches; returns the model and last losses."""
    images, labels = synthetic_data(
        steps * global_batch_size, image_size, seed
    )
    with strategy.scope():
        model = build_model(image_size, seed)
        optimizer = keras.optimizers.SGD(learning_rate)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=None
    )
    mask = model.get_layer("mask")
    dataset = strategy.distribute_datasets_from_function(
        make_dataset_fn(images, labels, global_batch_size)
    )

    def replica_step(batch_images, batch_labels):
        with tf.GradientTape() as tape:
            logits = model(batch_images, training=True)
            task_loss = tf.nn.compute_average_loss(
                cross_entropy(batch_labels, logits),
                global_batch_size=global_batch_size,
            )
            energy_loss = tf.nn.scale_regularization_loss(
                tf.add_n(model.losses)
            )
            loss = task_loss + energy_loss
        gradients = tape.gradient(loss, model.trainable_variables)
        # Keras's optimizer sums the gradients over all replicas.
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return task_loss, energy_loss

    @tf.function
    def train_step(iterator):
        task_loss, energy_loss = strategy.run(
            replica_step, args=next(iterator)
        )
        total = tf.distribute.ReduceOp.SUM
        return (
            strategy.reduce(total, task_loss, axis=None),
            strategy.reduce(total, energy_loss, axis=None),
        )

    iterator = iter(dataset)
    for step in range(steps):
        task_loss, energy_loss = train_step(iterator)
        print(
            f"step {step}: cross-entropy {float(task_loss):.6f} "
            f"energy {float(energy_loss):.6f}",
            flush=True,
        )
    return model, float(mask.kept_fraction.result())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument(
        "--global-batch-size",
        type=int,
        default=32,
        help="examples per step over all workers; divisible by the number "
        "of replicas",
    )
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in ("steps", "global_batch_size", "image_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1; "
                         f"received {getattr(args, name)}.")

    # Created before any other TensorFlow op runs, as the strategy requires.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    if args.global_batch_size % strategy.num_replicas_in_sync:
        parser.error(
            f"--global-batch-size must be divisible by the number of "
            f"replicas ({strategy.num_replicas_in_sync}); received "
            f"{args.global_batch_size}."
        )
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    workers = len(config.get("cluster", {}).get("worker", [None]))
    model, kept_fraction = train(
        strategy,
        args.steps,
        args.global_batch_size,
        args.image_size,
        args.learning_rate,
        args.seed,
    )
    print(
        f"worker {config.get('task', {}).get('index', 0)} of {workers}: "
        f"replicas {strategy.num_replicas_in_sync}, "
        f"kept fraction {kept_fraction:.6f}",
        flush=True,
    )
    print(f"weights sha256 {weights_checksum(model)}", flush=True)


if __name__ == "__main__":
    main()
