"""Train an ERSM classifier with the authors' protocol.

A Keras Applications backbone (ImageNet weights, frozen) -> EnergyMask ->
global average pooling -> Dense, trained with AdamW (lr 1e-3, weight decay
1e-4) and a cosine schedule on a tfds dataset, then the kept fraction and the
token masks of a few test images.

    python examples/train_classifier.py --dataset oxford_iiit_pet \
        --backbone ResNet50 --image-size 224 --epochs 20

Offline, run it on the built-in benchmark from scratch:

    python examples/train_classifier.py --dataset ersm_benchmark \
        --backbone MobileNetV2 --weights none --no-freeze --image-size 64
"""

import argparse
import math

import numpy as np

import keras_ersm
from keras_ersm import backbones
from keras_ersm import datasets
from keras_ersm import models
from keras_ersm.energy import FORMULATIONS
from keras_ersm.experiment import NUM_CLASSES


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="oxford_iiit_pet",
                        choices=sorted(NUM_CLASSES))
    parser.add_argument("--backbone", default="ResNet50",
                        choices=sorted(backbones.BACKBONES))
    parser.add_argument("--weights", default="imagenet",
                        help="'imagenet' or 'none'")
    parser.add_argument("--freeze", action=argparse.BooleanOptionalAction,
                        default=True, help="freeze the backbone (authors)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train-examples", type=int, default=None,
                        help="use only the first N training examples")
    parser.add_argument("--test-examples", type=int, default=None,
                        help="use only the first N test examples")
    parser.add_argument("--formulation", default="reference",
                        choices=FORMULATIONS)
    args = parser.parse_args(argv)
    for name in ("image_size", "batch_size", "epochs", "train_examples",
                 "test_examples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1; "
                         f"received {value}.")
    return args


def load(args, split, count):
    if count is not None:
        split = f"{split}[:{count}]"
    if args.dataset == "ersm_benchmark":
        return datasets.load_benchmark(
            split, args.batch_size, args.image_size, backbone=args.backbone
        )
    return datasets.load(
        args.dataset, split, args.image_size, args.batch_size,
        backbone=args.backbone,
    )


def main(argv=None):
    args = parse_args(argv)
    train = load(args, "train", args.train_examples)
    test = load(args, "validation" if args.dataset == "food101" else "test",
                args.test_examples)
    backbone = backbones.create(
        args.backbone, (args.image_size, args.image_size, 3),
        weights=None if args.weights.lower() == "none" else args.weights,
    )
    mask_kwargs = dict(models.AUTHORS_MASK_KWARGS,
                       formulation=args.formulation)
    model = keras_ersm.build_classifier(
        backbone, NUM_CLASSES[args.dataset], freeze_backbone=args.freeze,
        **mask_kwargs,
    )
    steps = int(train.cardinality())
    if steps < 1:
        steps = math.ceil(sum(1 for _ in train))
    model.compile(**models.authors_recipe(steps * args.epochs))
    model.fit(train, validation_data=test, epochs=args.epochs, verbose=2)

    results = model.evaluate(test, verbose=0, return_dict=True)
    count = sum(int(images.shape[0]) for images, _ in test)
    print(f"test ({count} images):",
          {key: round(float(value), 4) for key, value in results.items()})
    images, _ = next(iter(test))
    token_masks = keras_ersm.mask_model(model)(images[:4])
    for name, grid in token_masks.items():
        grid = np.asarray(grid)
        print(f"{name}: token grid {grid.shape[1:]}, kept fraction per "
              f"image {np.mean(grid > 0.5, axis=(1, 2)).round(3).tolist()}")
    return model


if __name__ == "__main__":
    main()
