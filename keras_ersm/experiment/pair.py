"""The model pair of a run: a baseline and an ERSM classifier that differ
only in the `EnergyMask` before the pooled head."""

import os

import keras

from keras_ersm import backbones
from keras_ersm import models
from keras_ersm import pretraining
from keras_ersm import validation
from keras_ersm.experiment.config import BENCHMARK_WEIGHTS
from keras_ersm.experiment.config import NAMED_WEIGHTS
from keras_ersm.experiment.config import CALLER


def pretrain_backbone(config, verbose=0):
    """The backbone of `weights="benchmark"`, pre-trained (or loaded from
    the cache, `keras_ersm.pretraining`), with its pre-training info."""
    return pretraining.pretrained_benchmark_backbone(
        config.image_size, backbone=config.backbone,
        feature_layer=config.feature_layer, epochs=config.pretrain_epochs,
        num_examples=config.pretrain_examples, verbose=verbose,
    )


def build_backbone(config):
    """The backbone, cut at `config.feature_layer` when one is given."""
    if config.weights == BENCHMARK_WEIGHTS:
        backbone, _ = pretrain_backbone(config)
    else:
        backbone = backbones.create(
            config.backbone,
            (config.image_size, config.image_size, 3),
            weights=config.weights,
        )
    if config.weights is None:
        backbones.follow_batch_statistics(backbone)
    return backbones.cut(backbone, config.feature_layer, caller=CALLER,
                         name=config.backbone)


def check_trainable(config):
    """Raise `ValueError` unless `config.feature_layer` is a layer of
    `config.backbone`, `config.mask.patch_size` divides its feature map and a
    weights file `config.weights` exists.

    Builds the backbone's architecture (no weights are loaded or
    downloaded), so a run fails before it writes or loads anything. The
    message of a missing layer lists the layers that end each stage of the
    backbone.
    """
    if config.weights not in NAMED_WEIGHTS and not os.path.isfile(
        config.weights
    ):
        raise ValueError(
            f"{CALLER}: argument `weights` names no file: {config.weights!r}."
        )
    height, width = backbones.feature_grid(
        config.backbone, config.image_size, config.feature_layer, caller=CALLER,
    )
    source = (f"the output of {config.feature_layer!r}"
              if config.feature_layer
              else f"{config.backbone}'s last feature map")
    validation.check_divides(
        CALLER, config.mask.patch_size, height, width,
        f"{source} on {config.image_size}x{config.image_size} images",
    )


def build_pair(config, num_classes):
    """(baseline, ersm): the same architecture and initial weights, except
    for the EnergyMask before the pooled head."""

    def classifier(name, **mask_kwargs):
        # The same seed before each build: the same initial weights.
        keras.utils.set_random_seed(config.seed)
        model = models.build_classifier(
            build_backbone(config), num_classes,
            freeze_backbone=config.freeze_backbone, **mask_kwargs,
        )
        return keras.Model(model.inputs, model.outputs, name=name)

    return (classifier("baseline", with_mask=False),
            classifier("ersm", **config.mask_kwargs()))
