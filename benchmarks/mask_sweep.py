"""Which mask formulation learns a sparse, object-centred mask? A sweep.

Every candidate of "the mask learns" (keeping cost, hard-concrete gates,
mask-mass scaling, the coherent field, the authors' dynamics), alone and
combined, trained side by side over seeds on the same frozen features: a
`BenchmarkConvNet` pre-trained on the benchmark's `pretrain` split
(`keras_ersm.pretraining`), features of the 90%-correlated `train` split
computed once. Each model is EnergyMask -> global average pooling -> Dense
(the baseline: no mask), trained with the authors' recipe (AdamW, cosine
decay) on the same batches. Measured on `test` and `test_shuffled`:
accuracy, the shuffled-background drop, the kept fraction and where the
kept tokens fall (`keras_ersm.evaluation.token_mask_statistics`), the
mask's IoU with the object and the deletion areas of the learned ranking
(both directions), each next to feature magnitude's, computed as `ersm
evaluate` does.

    python benchmarks/mask_sweep.py                 # the table in docs/results
    python benchmarks/mask_sweep.py --quick         # a minute-long smoke run

Writes `<output>/mask_sweep.json` and `<output>/mask_sweep.md`.
"""

import argparse
import json
import os
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_ersm import EnergyMask  # noqa: E402
from keras_ersm import initializers  # noqa: E402
from keras_ersm import presets  # noqa: E402
from keras_ersm import pretraining  # noqa: E402
from keras_ersm import recipes  # noqa: E402
from keras_ersm.datasets import load_benchmark  # noqa: E402
from keras_ersm.evaluation import deletion  # noqa: E402
from keras_ersm.evaluation import localization  # noqa: E402
from keras_ersm.evaluation.object_tokens import (  # noqa: E402
    object_token_fractions, token_mask_statistics)
from keras_ersm.evaluation import tokens  # noqa: E402

AUTHORS = presets.mask_kwargs("authors")
LEARNED = presets.mask_kwargs("learned")


def _learned(*keys):
    """The parts of the default configuration, to test each alone."""
    return {key: LEARNED[key] for key in keys}


HARD = _learned("gate", "temperature")
MASS = _learned("output_scaling")
COST = _learned("formulation", "unary_weight", "pairwise_weight")
COHERENT = {"formulation": "coherent", "neighbour_weights": "affinity",
            **_learned("unary_weight", "pairwise_weight")}

# name -> (EnergyMask arguments, initial keep or None for the arguments'
# own bias initializer, epochs or None for --epochs).
CANDIDATES = {
    "reference": (AUTHORS, 0.95, None),
    "authors dynamics, 4 epochs": (
        {**AUTHORS, **presets.AUTHORS_DYNAMICS}, None, 4),
    "authors dynamics, 8 epochs": (
        {**AUTHORS, **presets.AUTHORS_DYNAMICS}, None, 8),
    "reference + mask mass": ({**AUTHORS, **MASS}, 0.95, None),
    "reference + hard concrete": ({**AUTHORS, **HARD}, 0.95, None),
    "reference + hard concrete + mask mass": (
        {**AUTHORS, **HARD, **MASS}, 0.95, None),
    "keeping cost": (COST, 0.95, None),
    "keeping cost + mask mass": ({**COST, **MASS}, 0.95, None),
    "keeping cost + hard concrete": ({**COST, **HARD}, 0.95, None),
    # The default of `ersm train` and `EnergyMask()`.
    "keeping cost + hard concrete + mask mass": (
        LEARNED, 0.95, None),
    "keeping cost + hard concrete + mask mass, start 0.2": (
        {**COST, **HARD, **MASS}, 0.2, None),
    # The start of the quick demo (`experiment.quick_config`).
    "keeping cost + hard concrete + mask mass, start 0.5": (
        {**COST, **HARD, **MASS}, 0.5, None),
    "keeping cost + hard concrete + mask mass, lambda 0.1": (
        {**COST, **HARD, **MASS, "unary_weight": 0.1}, 0.95, None),
    "keeping cost + hard concrete + mask mass, lambda 0": (
        {**COST, **HARD, **MASS, "unary_weight": 0.0,
         "pairwise_weight": 0.0}, 0.95, None),
    # Object coverage (H7): the pool between mean (eps 1e-3) and sum, and
    # noisier or sharper gates (noise makes redundant tokens worth keeping).
    **{
        f"keeping cost + hard concrete + mask mass, eps {eps}": (
            {**LEARNED, "mask_mass_epsilon": eps}, 0.95,
            None)
        for eps in (0.03, 0.1)
    },
    **{
        f"keeping cost + hard concrete + mask mass, T {label}": (
            {**LEARNED, "temperature": value}, 0.95, None)
        for label, value in (("1/3", 1.0 / 3.0), ("1.5", 1.5))
    },
    "coherent, coupling 0.1 + mask mass": (
        {"formulation": "coherent", "unary_weight": 0.01,
         "pairwise_weight": 0.01, "coupling": 0.1, **MASS}, 0.95, None),
    # Binary gates decided by the mean-field marginals: a token's similar
    # neighbours decide with it (H7). Critical coupling: beta sum_j w_ij =
    # T = 2/3, i.e. beta ~ 0.08 for 8 neighbours at w = 1, more for the
    # cosine affinities.
    **{
        f"coherent, coupling {beta} + hard concrete + mask mass": (
            {**COHERENT, "coupling": beta, **HARD, **MASS}, 0.95, None)
        for beta in (0.05, 0.1, 0.2, 0.4)
    },
    # The three that widened coverage most without the background, together.
    "coherent, coupling 0.2 + hard concrete, T 1/3 + mask mass, eps 0.03": (
        {**COHERENT, "coupling": 0.2, **HARD, "temperature": 1.0 / 3.0,
         **MASS, "mask_mass_epsilon": 0.03}, 0.95, None),
}


def features_of(backbone, split, count, image_size, with_object_masks):
    data = load_benchmark(
        split if count is None else f"{split}[:{count}]", 128, image_size,
        backbone=pretraining.BACKBONE, with_object_masks=with_object_masks,
        shuffle=False,
    )
    features, labels, objects = [], [], []
    for batch in data:
        features.append(np.asarray(backbone(batch[0], training=False)))
        labels.append(np.asarray(batch[1]))
        if with_object_masks:
            objects.append(np.asarray(batch[2]))
    out = {"x": np.concatenate(features), "y": np.concatenate(labels)}
    if with_object_masks:
        objects = np.concatenate(objects)
        out["token_fractions"] = object_token_fractions(
            objects, out["x"].shape[1:3])
        out["areas"] = (objects >= 0.5).reshape(len(objects), -1).mean(1)
        out["objects"] = objects.reshape(objects.shape[:3])
    return out


def head(feature_shape, mask_kwargs, initial_keep, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(feature_shape)
    x = inputs
    if mask_kwargs is not None:
        kwargs = dict(mask_kwargs, seed=seed, name="energy_mask")
        if initial_keep is not None:
            kwargs["score_bias_initializer"] = initializers.initial_keep_bias(
                initial_keep, kwargs.get("temperature", 1.0))
        x = EnergyMask(**kwargs)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs)


def accuracy(model, split):
    predictions = model.predict(split["x"], batch_size=256, verbose=0)
    return float(np.mean(predictions.argmax(-1) == split["y"]))


def run(name, mask_kwargs, initial_keep, epochs, seed, splits, args):
    model = head(splits["train"]["x"].shape[1:], mask_kwargs, initial_keep,
                 seed)
    steps = epochs * int(np.ceil(len(splits["train"]["y"]) / args.batch_size))
    model.compile(**recipes.authors_recipe(
        steps, learning_rate=args.learning_rate, weight_decay=1e-4))
    # The same seed before every fit: every model sees the same batches.
    keras.utils.set_random_seed(seed)
    start = time.time()
    model.fit(splits["train"]["x"], splits["train"]["y"],
              batch_size=args.batch_size, epochs=epochs, verbose=0)
    row = {"name": name, "seed": seed, "epochs": epochs,
           "train_seconds": time.time() - start,
           "test": accuracy(model, splits["test"]),
           "test_shuffled": accuracy(model, splits["test_shuffled"])}
    row["drop"] = row["test"] - row["test_shuffled"]
    if mask_kwargs is not None:
        layer = model.get_layer("energy_mask")
        test = splits["test"]
        token_masks = np.concatenate([
            np.asarray(layer.explain(test["x"][i:i + 256])["mask"])
            for i in range(0, len(test["x"]), 256)
        ])
        row["mask"] = token_mask_statistics(
            token_masks, test["token_fractions"], test["areas"])
        row["mask"]["mean_value"] = float(token_masks.mean())
        row.update(ranking_measures(model, layer, test))
    return row


def magnitude_iou(split):
    """IoU of the min-max normalised feature magnitude with the object, at
    0.5, as `ersm evaluate`: the same for every model of the sweep."""
    norms = tokens.normalize_maps(tokens.token_norms(split["x"]))
    return float(np.mean(localization.mask_iou(norms, split["objects"])))


def ranking_measures(model, layer, split):
    """The learned mask's IoU with the object; deletion areas (both
    directions) of the learned ranking and of feature magnitude, deleting
    tokens from the masked map before the head, as `ersm evaluate`."""
    head = keras.Sequential(model.layers[-2:])
    grids = {"mask": [], "keep": []}
    masked = []
    for i in range(0, len(split["x"]), 256):
        x = split["x"][i:i + 256]
        explained = layer.explain(x)
        for key in grids:
            grids[key].append(np.asarray(explained[key]))
        masked.append(np.asarray(layer(x, training=False)))
    grids = {key: np.concatenate(values) for key, values in grids.items()}
    masked = np.concatenate(masked)
    priorities = {
        "learned": deletion.tie_broken_priorities(grids["mask"],
                                                  grids["keep"]),
        "magnitude": tokens.token_norms(split["x"]),
    }
    measures = {"iou": float(np.mean(
        localization.mask_iou(grids["mask"], split["objects"])))}
    for direction, first in (("least_first", False), ("most_first", True)):
        for order, priority in priorities.items():
            measures[f"deletion_{direction}_{order}"] = deletion.deletion_curve(
                head, masked, split["y"], priority, most_important_first=first,
                batch_size=256, order=order,
            ).area
    return measures


def mean_std(rows, get):
    values = np.array([get(row) for row in rows], np.float64)
    return f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}"


def markdown(rows, command, iou_of_magnitude):
    names = list(dict.fromkeys(row["name"] for row in rows))
    lines = [
        f"Made by `{command}`. Mean ± std over seeds "
        f"{sorted({row['seed'] for row in rows})}; test split; kept = mask "
        "> 0.5; on object = a token with >= 10% object pixels.",
        "",
        "| model | test accuracy | drop on test_shuffled | mean mask value | "
        "kept fraction | per-image std / mean | images keeping nothing | "
        "kept on object | effective kept | Spearman(kept, area) | IoU | "
        "deletion, least first: learned / magnitude | "
        "deletion, most first: learned / magnitude |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        group = [row for row in rows if row["name"] == name]
        cells = [mean_std(group, lambda r: r["test"]),
                 mean_std(group, lambda r: r["drop"])]
        if "mask" in group[0]:
            cells += [
                mean_std(group, lambda r: r["mask"]["mean_value"]),
                mean_std(group, lambda r: r["mask"]["kept_fraction"]["mean"]),
                mean_std(group,
                         lambda r: r["mask"]["kept_fraction"]["relative_std"]),
                mean_std(group, lambda r: r["mask"]["empty_images"]),
                mean_std(group, lambda r: r["mask"]["kept_on_object"]),
                mean_std(group, lambda r: r["mask"]["effective_kept_fraction"]),
                mean_std(group, lambda r: r["mask"]["spearman_kept_vs_area"]),
                mean_std(group, lambda r: r["iou"]),
            ] + [
                " / ".join(
                    mean_std(group, lambda r, key=f"deletion_{direction}_"
                             f"{order}": r[key])
                    for order in ("learned", "magnitude"))
                for direction in ("least_first", "most_first")
            ]
        else:
            cells += ["—"] * 10
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    base_rate = rows[-1].get("mask", {}).get("object_token_base_rate")
    if base_rate is not None:
        lines += ["", f"Share of all test tokens on the object (base rate): "
                      f"{base_rate:.3f}."]
    lines += ["", f"IoU of feature magnitude (min-max normalised, at 0.5): "
                  f"{iou_of_magnitude:.3f}. Deletion deletes tokens from "
                  "the layer's output before the head; most first: lower "
                  "is better."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="docs/results")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-examples", type=int, default=None)
    parser.add_argument("--test-examples", type=int, default=None)
    parser.add_argument("--pretrain-epochs", type=int, default=16)
    parser.add_argument("--pretrain-examples", type=int, default=None)
    parser.add_argument("--only", nargs="+", default=None,
                        help="candidate names to run (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="32x32, few examples, 1 epoch, seed 0")
    args = parser.parse_args(argv)
    command = "python benchmarks/mask_sweep.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.image_size, args.epochs, args.seeds = 32, 1, [0]
        args.train_examples, args.test_examples = 256, 64
        args.pretrain_epochs, args.pretrain_examples = 1, 256
    backbone, info = pretraining.pretrained_benchmark_backbone(
        args.image_size, epochs=args.pretrain_epochs, verbose=0,
        num_examples=args.pretrain_examples,
    )
    print(f"backbone: {info['path']} (cached: {info['cached']}; "
          f"pre-training accuracy {info['train_accuracy']})", flush=True)
    splits = {
        "train": features_of(backbone, "train", args.train_examples,
                             args.image_size, False),
        "test": features_of(backbone, "test", args.test_examples,
                            args.image_size, True),
        "test_shuffled": features_of(backbone, "test_shuffled",
                                     args.test_examples, args.image_size,
                                     True),
    }
    iou_of_magnitude = magnitude_iou(splits["test"])
    candidates = {"baseline (no mask)": (None, None, None), **CANDIDATES}
    if args.only:
        candidates = {name: candidates[name] for name in
                      ["baseline (no mask)", *args.only]}
    os.makedirs(args.output, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for name, (kwargs, keep, epochs) in candidates.items():
            row = run(name, kwargs, keep, epochs or args.epochs, seed, splits,
                      args)
            rows.append(row)
            kept = row.get("mask", {}).get("kept_fraction", {}).get("mean")
            print(f"seed {seed} | {name}: test {row['test']:.3f}, drop "
                  f"{row['drop']:.3f}, kept {kept}, "
                  f"{row['train_seconds']:.0f} s", flush=True)
            # Written after every row: a long sweep keeps what it measured.
            with open(os.path.join(args.output, "mask_sweep.json"),
                      "w") as file:
                json.dump({"command": command, "pretraining": info,
                           "magnitude_iou": iou_of_magnitude, "rows": rows},
                          file, indent=1)
            table = markdown(rows, command, iou_of_magnitude)
            with open(os.path.join(args.output, "mask_sweep.md"),
                      "w") as file:
                file.write(table)
    print(table)

if __name__ == "__main__":
    main()
