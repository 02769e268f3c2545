"""Export an ERSM model for TensorFlow Serving and check it without the package.

    python examples/export_and_serve.py --model ersm_demo/ersm.keras \
        --export-dir /tmp/models/ersm/1

Without --model a small untrained model is built (the model must have one
image input). The SavedModel is reloaded in a fresh Python process that
cannot import keras_ersm (as in TF Serving), both signatures are called with
the images under the input name `images` (`keras_ersm.export`'s default), and
REST request bodies for `tensorflow/serving` are written beside the export
directory (`request.json`, `explain_request.json`):

    docker run -p 8501:8501 -v /tmp/models/ersm:/models/ersm \
        -e MODEL_NAME=ersm tensorflow/serving
    curl -d @/tmp/models/ersm/request.json \
        localhost:8501/v1/models/ersm:predict
"""

import argparse
import json
import os
import subprocess
import sys

import keras
import numpy as np

import keras_ersm

# Runs in a process where `import keras_ersm` fails, like a serving host.
RELOAD = r"""
import sys, json
import numpy as np
class Forbid:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "keras_ersm":
            raise ImportError("keras_ersm is not available here")
sys.meta_path.insert(0, Forbid())
import tensorflow as tf
served = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
report = {}
for name in ("serving_default", "explain"):
    outputs = served.signatures[name](images=tf.constant(images))
    report[name] = {k: list(v.shape) for k, v in outputs.items()}
print(json.dumps(report))
"""


def tiny_model():
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same",
                            activation="relu")(inputs)
    x = keras_ersm.EnergyMask(patch_size=2, name="energy_mask")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax",
                                 name="predictions")(x)
    return keras.Model(inputs, outputs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help=".keras file (default: a tiny model)")
    parser.add_argument("--export-dir", default="/tmp/models/ersm/1")
    args = parser.parse_args(argv)

    model = keras.saving.load_model(args.model) if args.model else tiny_model()
    if len(model.inputs) != 1:
        parser.error(
            f"--model: the model has {len(model.inputs)} inputs; this "
            "example sends one batch of images."
        )
    keras_ersm.export(model, args.export_dir, input_name="images")
    shape = (2,) + tuple(model.inputs[0].shape[1:])
    images = np.random.default_rng(0).random(shape, np.float32)
    folder = os.path.dirname(os.path.abspath(args.export_dir))
    images_path = os.path.join(folder, "images.npy")
    np.save(images_path, images)

    reloaded = subprocess.run(
        [sys.executable, "-c", RELOAD, args.export_dir, images_path],
        capture_output=True, text=True, check=True,
    )
    print("Reloaded without keras_ersm; output shapes:",
          reloaded.stdout.strip().splitlines()[-1])
    instances = [{"images": image} for image in images[:1].tolist()]
    bodies = {
        "request.json": {"instances": instances},
        "explain_request.json": {"signature_name": "explain",
                                 "instances": instances},
    }
    for name, body in bodies.items():
        path = os.path.join(folder, name)
        with open(path, "w") as file:
            json.dump(body, file)
        print(f"REST body written to {path}; send it with\n"
              f"    curl -d @{path} localhost:8501/v1/models/ersm:predict")


if __name__ == "__main__":
    main()
