"""Why do the `authors` preset's mask statistics miss the authors' own loop?

`ersm train --preset authors --seed 0` (the authors' ERSM layer with their
training dynamics, `presets.mask_kwargs("authors_dynamics")`, and recipe on
the frozen pre-trained `BenchmarkConvNet`, 64x64 benchmark) matches the
authors' PyTorch loop in accuracy (0.899) and `test_shuffled` drop (0.803)
but not in its mask: mean mask 0.182, kept fraction (mask > 0.5) 0.001, 91%
of test images keeping no token, against their loop's 0.228 ± 0.001, 0.013
± 0.001 and 50% (seeds 0-2, same frozen features; docs/mask_learning.md).

This script trains the preset's model on cached frozen features (the same
model `ersm train` builds after the frozen backbone: EnergyMask(authors
dynamics) -> GlobalAveragePooling2D -> Dense(10, softmax); batch 32, 20
epochs, AdamW lr 1e-3 / weight decay 1e-4 with the cosine decay stepped once
per epoch, `recipes.authors_recipe`) in variants, each a candidate cause
of the gap:

* `baseline`: as the preset (Keras AdamW epsilon 1e-7, Dense Glorot-uniform
  kernel and zero bias).
* `eps`: AdamW epsilon 1e-8, PyTorch's default.
* `head`: the Dense initialised as PyTorch's `nn.Linear(128, 10)`: kernel
  and bias both U(-1/sqrt(128), 1/sqrt(128)).
* `both`: the two together.
* `torch_adam`: epsilon 1e-8 placed as PyTorch places it (`TorchFormAdamW`:
  Keras's epsilon is PyTorch's divided by sqrt(1 - beta_2^t), larger early).
* `torch_all`: `torch_adam` and the PyTorch-like head.
* `replica`: as `baseline`, but from the initial weights of the model
  `ersm train --preset authors --seed <seed>` builds and in its batch order
  (its `EpochOrder` pipeline, each image matched to its features): what
  `ersm train` itself does, up to floating-point differences.
* `replica_init`, `replica_order`: only ersm train's initial weights, only
  its batch order (the rest drawn here).
* `replica_mask_init`, `replica_head_init`: ersm train's initial weights of
  the EnergyMask only, of the Dense only.
* `replica_torch_all`: `replica`'s batch order and mask initialisation, with
  the PyTorch-like head and `TorchFormAdamW`.

and, per seed, measures on `test`: the mean mask value, the kept fraction
(mask > 0.5), the share of images keeping no token, accuracy, and the drop
on `test_shuffled` (test accuracy - test_shuffled accuracy). The third
candidate, batch order / seed noise, is the spread over `--seeds`.

Training here is on features computed once (backbone in inference mode, as
frozen in `ersm train`). Except in the `replica` variants, they are shuffled
each epoch by `fit` after `keras.utils.set_random_seed(seed)` and the
initial weights are drawn here: neither is `ersm train`'s, only equally
random.

Reproduce (CPU; features cached in --cache-dir on the first run):

    python benchmarks/authors_parity.py --seeds 0 --variants baseline eps head both
    python benchmarks/authors_parity.py --seeds 1 2 --variants baseline eps head both
    python benchmarks/authors_parity.py --seeds 0 --variants torch_adam torch_all replica replica_torch_all
    python benchmarks/authors_parity.py --seeds 0 --variants replica_init replica_order replica_mask_init replica_head_init
    python benchmarks/authors_parity.py --seeds 1 2 --variants replica_init
    python benchmarks/authors_parity.py --seeds 3 4 5 6 --variants baseline head

Each run appends its row to `<cache-dir>/rows.jsonl` and the table of all
rows there is printed (`--table-only` prints it without training).

What it found: docs/results/authors_parity.md and docs/mask_learning.md
("The authors' preset against their own loop").
"""

import argparse
import hashlib
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_ersm import build_classifier  # noqa: E402
from keras_ersm import presets  # noqa: E402
from keras_ersm import pretraining  # noqa: E402
from keras_ersm import recipes  # noqa: E402
from keras_ersm.evaluation.object_tokens import (  # noqa: E402
    token_mask_statistics)

SPLITS = ("train", "test", "test_shuffled")
# The preset's targets: `ersm train --preset authors --seed 0` and the
# authors' loop on the same frozen features (seeds 0-2).
OURS = {"mean_mask": 0.182, "kept": 0.001, "empty": 0.912, "test": 0.899,
        "drop": 0.803}
THEIRS = {"mean_mask": 0.228, "kept": 0.013, "empty": 0.50, "test": 0.8995,
          "drop": 0.803}
VARIANTS = {
    # name -> (AdamW epsilon (None: Keras's 1e-7), PyTorch-like head
    # initialisation, PyTorch's form of the Adam update, initial weights of
    # ersm train's model (True: both layers, or "mask" / "head"), ersm
    # train's batch order)
    "baseline": (None, False, False, False, False),
    "eps": (1e-8, False, False, False, False),
    "head": (None, True, False, False, False),
    "both": (1e-8, True, False, False, False),
    "torch_adam": (1e-8, False, True, False, False),
    "torch_all": (1e-8, True, True, False, False),
    # ersm train's own initial weights and/or batch order (`replica_of`).
    "replica": (None, False, False, True, True),
    "replica_init": (None, False, False, True, False),
    "replica_order": (None, False, False, False, True),
    # ersm train's initial weights of one layer only.
    "replica_mask_init": (None, False, False, "mask", False),
    "replica_head_init": (None, False, False, "head", False),
    "replica_torch_all": (1e-8, True, True, True, True),
}


class TorchFormAdamW(keras.optimizers.AdamW):
    """Keras's AdamW with PyTorch's placement of epsilon.

    Keras steps `lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`;
    PyTorch `lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`. The
    same update for a Keras epsilon of `eps * sqrt(1 - b2^t)`: Keras's
    epsilon acts as PyTorch's `eps / sqrt(1 - b2^t)`, 32 times larger at
    step 1 and still 1.6 times at step 500. The weight decay (decoupled,
    `var -= lr * wd * var` before the step) is the same in both.
    """

    def update_step(self, gradient, variable, learning_rate):
        ops = keras.ops
        local_step = ops.cast(self.iterations + 1, variable.dtype)
        correction = ops.sqrt(1 - ops.power(
            ops.cast(self.beta_2, variable.dtype), local_step))
        epsilon = self.epsilon
        # The step-dependent epsilon of PyTorch's form, for this update only.
        self.epsilon = ops.multiply(ops.cast(epsilon, variable.dtype),
                                    correction)
        try:
            super().update_step(gradient, variable, learning_rate)
        finally:
            self.epsilon = epsilon


def cached_features(cache_dir, image_size, pretrain_epochs):
    """{split: {"x", "y"[, "token_fractions", "areas"]}} of the frozen
    backbone `ersm train` uses by default, computed once with
    `mask_sweep.features_of` and stored as .npy in `cache_dir`."""
    os.makedirs(cache_dir, exist_ok=True)
    keys = {"train": ("x", "y"),
            "test": ("x", "y", "token_fractions", "areas"),
            "test_shuffled": ("x", "y")}
    paths = {split: {key: os.path.join(cache_dir, f"{split}_{key}.npy")
                     for key in keys[split]} for split in SPLITS}
    if not all(os.path.exists(p) for d in paths.values() for p in d.values()):
        from mask_sweep import features_of
        backbone, info = pretraining.pretrained_benchmark_backbone(
            image_size, epochs=pretrain_epochs, verbose=0)
        print(f"backbone: {info['path']} (cached: {info['cached']})",
              flush=True)
        for split in SPLITS:
            start = time.time()
            out = features_of(backbone, split, None, image_size,
                              split == "test")
            for key, path in paths[split].items():
                np.save(path, out[key])
            print(f"features {split}: {out['x'].shape}, "
                  f"{time.time() - start:.0f} s", flush=True)
    return {split: {key: np.load(path) for key, path in d.items()}
            for split, d in paths.items()}


def build(feature_shape, seed, torch_head):
    """The preset's ERSM model after the frozen backbone: `build_classifier`
    on the features, as `experiment.pair.build_pair` builds it."""
    keras.utils.set_random_seed(seed)
    features = keras.Input(feature_shape)
    model = build_classifier(keras.Model(features, features), 10,
                             **presets.mask_kwargs("authors_dynamics"),
                             seed=seed)
    if torch_head:
        # nn.Linear(fan_in, n): kaiming_uniform(a=sqrt(5)) on the weight and
        # U(+-1/sqrt(fan_in)) on the bias, both bounded by 1/sqrt(fan_in).
        # (keras_ersm.initializers.FanInUniform would bound by 1/sqrt of the
        # number of entries, 1280 for this kernel and 10 for the bias.)
        limit = 1.0 / math.sqrt(feature_shape[-1])
        dense = model.get_layer("predictions")
        for variable, offset in ((dense.kernel, 0), (dense.bias, 1)):
            variable.assign(keras.initializers.RandomUniform(
                -limit, limit, seed=seed + offset)(variable.shape))
    return model


def recipe(total_steps, steps_per_epoch, epsilon, torch_form=False):
    """`recipes.authors_recipe` with the cosine decay stepped per epoch; with
    `epsilon`, its AdamW's epsilon replaced (same schedule, lr and weight
    decay)."""
    compiled = recipes.authors_recipe(total_steps,
                                      steps_per_epoch=steps_per_epoch)
    if torch_form:
        old = compiled["optimizer"]
        compiled["optimizer"] = TorchFormAdamW(
            learning_rate=old._learning_rate, weight_decay=old.weight_decay,
            epsilon=epsilon)
    elif epsilon is not None:
        # Keras's AdamW reads `epsilon` in every update step; set before the
        # first step, it is the optimizer `AdamW(..., epsilon=epsilon)`.
        compiled["optimizer"].epsilon = epsilon
    return compiled


def _image_key(image):
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def replica_of(seed, splits, args):
    """The initial weights (of the EnergyMask and the Dense) and the batch
    order of every epoch of `ersm train --preset authors --seed <seed>`.

    The weights are those of the ERSM model `experiment.pair.build_pair`
    builds for that config; the order is that of its train pipeline
    (`experiment.data.load_data`: `load_benchmark` shuffled by an
    `EpochOrder`), each image found among the unshuffled features by a hash
    of its pixels. Cached in `--cache-dir`."""
    path = os.path.join(args.cache_dir, f"replica_seed{seed}.npz")
    if not os.path.exists(path):
        from keras_ersm.datasets import EpochOrder
        from keras_ersm.datasets import load_benchmark
        from keras_ersm.experiment import pair
        from keras_ersm.experiment.config import ExperimentConfig
        config = ExperimentConfig.from_preset("authors", seed=seed)
        assert config.train_examples is None
        assert (config.image_size, config.epochs) == (args.image_size,
                                                      args.epochs)
        _, ersm = pair.build_pair(config, 10)
        mask = ersm.get_layer("energy_mask").get_weights()
        dense = ersm.get_layer("predictions").get_weights()
        index = {}
        for images, _ in load_benchmark("train", 500, config.image_size,
                                        backbone=config.backbone,
                                        shuffle=False):
            for image in np.asarray(images):
                index[_image_key(image)] = len(index)
        assert len(index) == len(splits["train"]["y"]), "duplicate images"
        order = EpochOrder()
        data = load_benchmark("train", 500, config.image_size,
                              backbone=config.backbone, seed=config.seed,
                              order=order)
        orders = []
        for epoch in range(config.epochs):
            order.on_epoch_begin(epoch)
            keys, labels = [], []
            for images, batch_labels in data:
                keys += [index[_image_key(image)]
                         for image in np.asarray(images)]
                labels.append(np.asarray(batch_labels))
            assert np.array_equal(np.concatenate(labels),
                                  splits["train"]["y"][keys])
            orders.append(keys)
            print(f"ersm train's order, seed {seed}, epoch {epoch}: first "
                  f"{keys[:4]}", flush=True)
        np.savez(path, orders=np.array(orders),
                 **{f"mask{i}": w for i, w in enumerate(mask)},
                 **{f"dense{i}": w for i, w in enumerate(dense)})
    stored = np.load(path)
    return {"orders": stored["orders"],
            "mask": [stored[f"mask{i}"] for i in range(sum(
                key.startswith("mask") for key in stored.files))],
            "dense": [stored["dense0"], stored["dense1"]]}


def accuracy(model, split):
    predictions = model.predict(split["x"], batch_size=256, verbose=0)
    return float(np.mean(predictions.argmax(-1) == split["y"]))


def run(variant, seed, splits, args):
    epsilon, torch_head, torch_form, ersm_init, ersm_order = VARIANTS[
        variant]
    train = splits["train"]
    model = build(train["x"].shape[1:], seed, torch_head)
    steps_per_epoch = math.ceil(len(train["y"]) / args.batch_size)
    model.compile(**recipe(steps_per_epoch * args.epochs, steps_per_epoch,
                           epsilon, torch_form))
    optimizer = model.optimizer
    replica = replica_of(seed, splits, args) if (
        ersm_init or ersm_order) else None
    if ersm_init in (True, "mask"):
        model.get_layer("energy_mask").set_weights(replica["mask"])
    if ersm_init in (True, "head") and not torch_head:
        model.get_layer("predictions").set_weights(replica["dense"])
    keras.utils.set_random_seed(seed)
    start = time.time()
    if not ersm_order:
        model.fit(train["x"], train["y"], batch_size=args.batch_size,
                  epochs=args.epochs, shuffle=True, verbose=0)
    else:
        # One fit per epoch, in ersm train's order; the optimizer's step
        # count (and so the schedule) carries over.
        for order in replica["orders"]:
            model.fit(train["x"][order], train["y"][order],
                      batch_size=args.batch_size, epochs=1, shuffle=False,
                      verbose=0)
    seconds = time.time() - start
    test = splits["test"]
    layer = model.get_layer("energy_mask")
    masks = np.concatenate([
        np.asarray(layer.explain(test["x"][i:i + 256])["mask"])
        for i in range(0, len(test["x"]), 256)])
    stats = token_mask_statistics(masks, test["token_fractions"],
                                  test["areas"])
    row = {
        "variant": variant, "seed": seed, "epsilon": float(optimizer.epsilon),
        "torch_head": torch_head,
        "torch_form_adam": torch_form,
        "ersm_init": ersm_init, "ersm_order": ersm_order, "epochs": args.epochs,
        "batch_size": args.batch_size, "seconds": seconds,
        "mean_mask": float(masks.mean()),
        "kept": stats["kept_fraction"]["mean"],
        "empty": stats["empty_images"],
        "kept_on_object": stats["kept_on_object"],
        "test": accuracy(model, test),
        "test_shuffled": accuracy(model, splits["test_shuffled"]),
        "final_learning_rate": float(keras.ops.convert_to_numpy(
            optimizer.learning_rate)),
    }
    row["drop"] = row["test"] - row["test_shuffled"]
    return row


def table(rows):
    lines = ["| variant | seed | mean mask | kept (> 0.5) | empty images | "
             "accuracy | drop | s / run |", "|---|---|---|---|---|---|---|---|"]
    for name, ref in (("ersm train --preset authors", OURS),
                      ("authors' loop (seeds 0-2)", THEIRS)):
        lines.append(f"| {name} | — | {ref['mean_mask']:.3f} | "
                     f"{ref['kept']:.3f} | {ref['empty']:.2f} | "
                     f"{ref['test']:.3f} | {ref['drop']:.3f} | — |")
    order = {name: i for i, name in enumerate(VARIANTS)}
    for row in sorted(rows, key=lambda r: (order[r["variant"]], r["seed"])):
        lines.append(
            f"| {row['variant']} | {row['seed']} | {row['mean_mask']:.3f} | "
            f"{row['kept']:.4f} | {row['empty']:.3f} | {row['test']:.3f} | "
            f"{row['drop']:.3f} | {row['seconds']:.0f} |")
    for name in VARIANTS:
        group = [r for r in rows if r["variant"] == name]
        if len(group) > 1:
            cells = [f"{np.mean([r[k] for r in group]):.3f} ± "
                     f"{np.std([r[k] for r in group]):.3f}"
                     for k in ("mean_mask", "kept", "empty", "test", "drop")]
            lines.append(f"| {name}, mean ± std | "
                         f"{len(group)} seeds | " + " | ".join(cells) + " | — |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default="/tmp/authors_parity")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                        choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--pretrain-epochs", type=int, default=16)
    parser.add_argument("--table-only", action="store_true",
                        help="print the table of the rows so far and exit")
    args = parser.parse_args(argv)
    rows_path = os.path.join(args.cache_dir, "rows.jsonl")
    if not args.table_only:
        splits = cached_features(args.cache_dir, args.image_size,
                                 args.pretrain_epochs)
        for seed in args.seeds:
            for variant in args.variants:
                row = run(variant, seed, splits, args)
                print(json.dumps(row), flush=True)
                with open(rows_path, "a") as file:
                    file.write(json.dumps(row) + "\n")
    rows = []
    if os.path.exists(rows_path):
        with open(rows_path) as file:
            rows = [json.loads(line) for line in file if line.strip()]
    print(table(rows))


if __name__ == "__main__":
    main()
