"""Train an ERSM classifier: attach the mask, fit, read the mask, export.

A Keras Applications backbone, frozen and cut at its feature layer, with a
pooled linear head; `keras_ersm.attach` puts `EnergyMask()` (the package's
default, the mask that learns) after the feature layer; `model.fit` trains
it with the authors' recipe (AdamW, lr 1e-3, weight decay 1e-4, cosine
decay stepped once per epoch). Then the test accuracy and kept fraction,
the masks of a few test images read with `keras_ersm.mask_model`, and a
SavedModel written with `keras_ersm.export`.

On a paper dataset, with ImageNet weights (the dataset, through tfds, and
the weights are downloaded on the first run):

    python examples/train_classifier.py --dataset oxford_iiit_pet \
        --backbone ResNet50 --weights imagenet --image-size 224 --epochs 20

Offline, on the built-in benchmark, with the backbone pre-trained on the
benchmark's `pretrain` split in place of ImageNet (once, then cached in
~/.keras/keras_ersm; see keras_ersm.pretraining):

    python examples/train_classifier.py --dataset ersm_benchmark \
        --backbone MobileNetV2 --weights benchmark --image-size 64

The mask can only select tokens small enough to lie on or off the object.
With `--feature-layer auto` (the default) a benchmark-trained backbone is
cut at `keras_ersm.backbones.LOCAL_FEATURE_LAYERS`, made for 64x64 images
(MobileNetV2 "block_5_expand_relu": 8x8 tokens, each seeing 43 pixels;
ResNet50 "conv2_block3_out": 16x16 tokens seeing 35), and any other
backbone at its last feature map, where the paper masks ImageNet backbones
(7x7 tokens on 224x224 images, one per 32x32 pixels). `--feature-layer`
takes any layer name instead, or `none` for the last feature map.
"""

import argparse
import math
import os

import numpy as np

import keras_ersm
from keras_ersm import backbones
from keras_ersm import datasets
from keras_ersm import pretraining
from keras_ersm import recipes
from keras_ersm.experiment import NUM_CLASSES

# The masks printed, one grid per test image.
IMAGES_SHOWN = 3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="oxford_iiit_pet",
                        choices=sorted(NUM_CLASSES))
    parser.add_argument("--backbone", default="ResNet50",
                        choices=sorted(backbones.BACKBONES))
    parser.add_argument("--weights", default="imagenet",
                        choices=["imagenet", "benchmark", "none"],
                        help="ImageNet's, pre-trained on the benchmark "
                        "(offline; --dataset ersm_benchmark), or none")
    parser.add_argument("--feature-layer", default="auto",
                        help="the layer the backbone is cut at and the mask "
                        "attached after: 'auto', 'none' (the last feature "
                        "map) or a layer name")
    parser.add_argument("--freeze", action=argparse.BooleanOptionalAction,
                        default=True, help="freeze the backbone (authors)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train-examples", type=int, default=None,
                        help="use only the first N training examples")
    parser.add_argument("--test-examples", type=int, default=None,
                        help="use only the first N test examples")
    parser.add_argument("--pretrain-epochs", type=int, default=16,
                        help="epochs of pre-training (--weights benchmark)")
    parser.add_argument("--pretrain-examples", type=int, default=None,
                        help="pre-train on the first N examples only")
    parser.add_argument("--export-dir", default="models/ersm/1",
                        help="where the SavedModel is written")
    args = parser.parse_args(argv)
    for name in ("image_size", "batch_size", "epochs", "train_examples",
                 "test_examples", "pretrain_epochs", "pretrain_examples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1; "
                         f"received {value}.")
    if args.weights == "benchmark" and args.dataset != "ersm_benchmark":
        parser.error("--weights benchmark: only with --dataset "
                     "ersm_benchmark.")
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


def feature_extractor(args):
    """The backbone up to its feature layer, with its weights."""
    layer = args.feature_layer
    if layer == "auto":
        layer = (backbones.LOCAL_FEATURE_LAYERS.get(args.backbone)
                 if args.weights == "benchmark" else None)
    elif layer.lower() == "none":
        layer = None
    if args.weights == "benchmark":
        backbone, _ = pretraining.pretrained_benchmark_backbone(
            args.image_size, backbone=args.backbone, feature_layer=layer,
            epochs=args.pretrain_epochs, num_examples=args.pretrain_examples,
            verbose=2,
        )
        return backbone
    weights = None if args.weights == "none" else args.weights
    backbone = backbones.create(
        args.backbone, (args.image_size, args.image_size, 3), weights=weights
    )
    if weights is None:
        # Trained from scratch: batch statistics that keep up.
        backbones.follow_batch_statistics(backbone)
    return backbones.cut(backbone, layer)


def show(grid):
    """A 0/1 token mask as text: '#' kept, '.' dropped."""
    return "\n".join("  " + " ".join("#" if kept else "." for kept in row)
                     for row in grid)


def main(argv=None):
    args = parse_args(argv)
    train = load(args, "train", args.train_examples)
    test = load(args, "validation" if args.dataset == "food101" else "test",
                args.test_examples)

    # A classifier: the backbone up to its feature layer, frozen, then
    # global average pooling and a Dense head.
    features = feature_extractor(args)
    feature_layer = features.layers[-1].name
    classifier = keras_ersm.build_classifier(
        features, NUM_CLASSES[args.dataset], freeze_backbone=args.freeze,
        with_mask=False,
    )
    # Attach: EnergyMask() after the feature layer (any layer of a
    # functional model will do, mid-backbone too). The mask is named
    # "<layer>_energy_mask" and trains; the frozen layers stay frozen.
    model = keras_ersm.attach(classifier, feature_layer)
    mask_name = f"{feature_layer}_energy_mask"
    print(f"EnergyMask() after {args.backbone}'s {feature_layer!r}: "
          f"{tuple(features.output.shape[1:3])} tokens of "
          f"{features.output.shape[3]} channels")

    # Fit, with the authors' recipe.
    steps = int(train.cardinality())
    if steps < 1:
        steps = math.ceil(sum(1 for _ in train))
    model.compile(**recipes.authors_recipe(steps * args.epochs,
                                          steps_per_epoch=steps))
    # The loaders shuffle the training split (fit's shuffle would be ignored).
    model.fit(train, validation_data=test, epochs=args.epochs, verbose=2,
              shuffle=False)

    # Read the mask: the kept fraction (mask > 0.5) over the test split, and
    # the masks of a few test images.
    results = model.evaluate(test, verbose=0, return_dict=True)
    count = sum(int(images.shape[0]) for images, _ in test)
    print(f"test ({count} images): accuracy "
          f"{float(results['accuracy']):.3f}, kept fraction "
          f"{float(results[f'{mask_name}_kept_fraction']):.3f}")
    images, labels = next(iter(test.unbatch().batch(IMAGES_SHOWN)))
    masks = keras_ersm.mask_model(model).predict(images, verbose=0)[mask_name]
    for mask, label in zip(masks, np.asarray(labels)):
        print(f"test image of class {label}: kept {np.mean(mask > 0.5):.3f} "
              f"of {mask.shape[0]}x{mask.shape[1]} tokens")
        print(show(mask > 0.5))

    # Export: a SavedModel for TensorFlow Serving, with the masks.
    signatures = keras_ersm.export(model, args.export_dir)
    print(f"SavedModel in {os.path.abspath(args.export_dir)}, signatures "
          f"{signatures}")
    return model


if __name__ == "__main__":
    main()
