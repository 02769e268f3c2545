"""How well a backbone's frozen tokens tell the object from the background.

For each backbone pre-trained on the benchmark (cached by `ersm train`; this
script does not pre-train), at its local feature layer
(`backbones.LOCAL_FEATURE_LAYERS`): a logistic regression on the tokens'
L2-normalised features (the form the default gate scores), fitted on the
`validation` split with the object tokens as labels, scored on `test`.
Its average precision is the ceiling of a linear gate on those tokens;
feature magnitude is the label-free reading. Tokens beside the object
(8-neighbours of an object token) are reported apart: their receptive
fields see the object.

    python benchmarks/token_probe.py [--backbones BenchmarkConvNet MobileNetV2]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import average_precision_score  # noqa: E402

from keras_ersm import backbones, pretraining  # noqa: E402
from keras_ersm.datasets import load_benchmark  # noqa: E402
from keras_ersm.evaluation import object_tokens  # noqa: E402


def token_features(backbone, name, split, count):
    """`(features (n, h, w, c), object tokens (n, h, w))` of `split`'s
    first `count` images."""
    data = load_benchmark(split, 100, 64, backbone=name,
                          with_object_masks=True, shuffle=False)
    features, on_object = [], []
    for images, _, object_masks in data.take(count // 100):
        grid = np.asarray(backbone(images, training=False), np.float32)
        features.append(grid)
        on_object.append(object_tokens(
            np.asarray(object_masks), grid.shape[1:3]))
    return np.concatenate(features), np.concatenate(on_object)


def beside(on_object):
    """Tokens that are not on the object but touch one that is."""
    padded = np.pad(on_object, ((0, 0), (1, 1), (1, 1)))
    height, width = on_object.shape[1:]
    near = np.zeros_like(on_object)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            near |= padded[:, dy:dy + height, dx:dx + width]
    return near & ~on_object


def probe_row(name):
    feature_layer = backbones.LOCAL_FEATURE_LAYERS[name]
    backbone, info = pretraining.pretrained_benchmark_backbone(
        64, backbone=name, feature_layer=feature_layer, verbose=0)
    if not info["cached"]:
        raise SystemExit(f"{name} was pre-trained now; run `ersm train "
                         f"--backbone {name}` first to measure its cache.")
    fit_x, fit_on = token_features(backbone, name, "validation", 1000)
    test_x, test_on = token_features(backbone, name, "test", 1000)

    def normalised(x):
        flat = x.reshape(-1, x.shape[-1])
        return flat / (np.linalg.norm(flat, axis=1, keepdims=True) + 1e-6)

    probe = LogisticRegression(max_iter=2000, class_weight="balanced")
    probe.fit(normalised(fit_x), fit_on.ravel())
    scores = probe.decision_function(normalised(test_x))
    labels = test_on.ravel()
    magnitude = np.linalg.norm(test_x.reshape(-1, test_x.shape[-1]), axis=1)
    near = beside(test_on).ravel()
    # The probe at the threshold that keeps 60% of the object's tokens of
    # `validation` (chosen there, not on `test`): on `test`, the share of
    # the object it keeps, and of what it keeps, the share on the object
    # and beside it.
    fit_scores = probe.decision_function(normalised(fit_x))
    threshold = np.quantile(fit_scores[fit_on.ravel()], 0.4)
    kept = scores >= threshold
    return [
        name, feature_layer or "(last)", f"{test_x.shape[1]}x{test_x.shape[2]}",
        f"{labels.mean():.3f}",
        f"{average_precision_score(labels, scores):.3f}",
        f"{average_precision_score(labels, magnitude):.3f}",
        f"{kept[labels].mean():.3f}",
        f"{labels[kept].mean():.3f}",
        f"{near[kept].mean():.3f}",
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+",
                        default=["BenchmarkConvNet", "MobileNetV2"])
    args = parser.parse_args(argv)
    header = ["backbone", "layer", "tokens", "object tokens (base rate)",
              "AP, linear probe", "AP, feature magnitude",
              "probe at 60% validation coverage: test coverage",
              "... precision", "... kept tokens beside the object"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in args.backbones:
        print("| " + " | ".join(probe_row(name)) + " |", flush=True)


if __name__ == "__main__":
    main()
