"""Train the tiny model on one device and under a two-replica
`MirroredStrategy` with the same global batch; save both results.

Usage: python mirrored_check.py OUT.npz

Two logical CPU devices must be configured before TensorFlow initialises,
hence a process of its own. Two cases: the classifier ("task": cross-entropy
plus energy loss) and a model whose only loss is the energy ("energy"), which
isolates the per-replica scaling of the `add_loss` term.
"""

import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tiny  # noqa: E402

GLOBAL_BATCH = 8
EPOCHS = 2


def train(strategy, case, images, labels):
    with strategy.scope():
        model = tiny.build_model()
        if case == "task":
            tiny.compile_for_classification(model)
        else:
            # No task loss: the energy added with add_loss is the only loss.
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss=None)
    targets = labels if case == "task" else None
    initial = model.get_weights()
    history = model.fit(
        images,
        targets,
        batch_size=GLOBAL_BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
    )
    result = {
        "replicas": strategy.num_replicas_in_sync,
        "loss": history.history["loss"],
        "kept_fraction": history.history["mask_kept_fraction"],
    }
    if case == "task":
        evaluation = model.evaluate(
            images, labels, batch_size=GLOBAL_BATCH, verbose=0, return_dict=True
        )
        result["evaluate_kept_fraction"] = evaluation["mask_kept_fraction"]
    for index, (before, after) in enumerate(zip(initial, model.get_weights())):
        result[f"initial_{index}"] = before
        result[f"final_{index}"] = after
    return result


def main(path):
    images, labels = tiny.data(16)
    strategies = {
        "single": tf.distribute.OneDeviceStrategy("/cpu:0"),
        "mirrored": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
    }
    arrays = {}
    for case in ("task", "energy"):
        for name, strategy in strategies.items():
            for key, value in train(strategy, case, images, labels).items():
                arrays[f"{case}/{name}/{key}"] = np.asarray(value)
    np.savez(path, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
