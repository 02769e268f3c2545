"""Measuring a run's model pair and writing its report."""

import time

import numpy as np

from keras_ersm import evaluation
from keras_ersm import graph
from keras_ersm.datasets import get_preprocessing
from keras_ersm.experiment import run_folder
from keras_ersm.experiment.data import NUM_CLASSES
from keras_ersm.experiment.data import TEST_SPLITS
from keras_ersm.experiment.data import VALIDATION_SPLITS
from keras_ersm.experiment.data import load_data
from keras_ersm.experiment.phases import benchmark_phase
from keras_ersm.experiment.phases import phase


def grey_fill_value(backbone):
    """A mid-grey pixel in the backbone's input space, one value per channel.

    Per channel, not averaged: caffe-mode preprocessing (BGR, mean
    subtracted) and torch-mode (standardised) give grey a different value
    in each channel, and their mean is a coloured occluder.
    """
    grey = np.full((1, 1, 1, 3), 127.5, np.float32)
    return np.asarray(get_preprocessing(backbone)(grey))[0, 0, 0].tolist()


def _annotate(result, split, seed):
    result = dict(result)
    result.setdefault("split", split)
    result.setdefault("seed", seed)
    return result


# A quarter of the object's box: the point the summary's occlusion target
# reads, added to the run's occlusion fractions.
BOX_QUARTER = 0.25


def _token_grid(ersm):
    """`(rows, columns)` of the ERSM model's (first) mask's token grid."""
    split = evaluation.split_at_mask(ersm)
    _, height, width, _ = split.features.output.shape
    patch = split.mask_layer.options.patch_size
    return height // patch, width // patch


def evaluate_pair(baseline, ersm, data, config, *, phases=None):
    """Every claim of the paper, measured on both models; see `METRICS_SCHEMA`
    in `keras_ersm.report` for the layout of the returned dict.

    `phases` (a `keras_ersm.progress.Phases`) announces each measurement,
    which then shows a progress bar with `phases.verbose`; without it
    nothing is printed.
    """
    verbose = 0 if phases is None else phases.verbose
    seed = config.seed
    test = data["test"]
    test_split = TEST_SPLITS.get(config.dataset, "test")
    images_labels = test.map(lambda *example: example[:2])

    def on_test(result):
        return _annotate(result, test_split, seed)

    def on_both(measure, split=test_split):
        return {name: _annotate(measure(model), split, seed)
                for name, model in (("baseline", baseline), ("ersm", ersm))}

    metrics = {}
    chance = 1.0 / NUM_CLASSES[config.dataset]
    with phase(phases, "Measuring accuracy (baseline, then ERSM)"):
        metrics["accuracy"] = on_both(lambda model: {
            **evaluation.top1_accuracy(model, images_labels, verbose=verbose),
            "chance_accuracy": chance,
        })
    with phase(phases, "Measuring sparsity (ERSM)"):
        metrics["sparsity"] = on_test(evaluation.sparsity_statistics(
            ersm, images_labels, verbose=verbose))
    metrics["deletion"] = {}
    for direction, most_first in (
        ("least_important_first", False),
        ("most_important_first", True),
    ):
        with phase(phases, f"Measuring deletion, "
                   f"{direction.replace('_', ' ')} (areas of the learned, "
                   "magnitude, random and Grad-CAM rankings)"):
            metrics["deletion"][direction] = on_test(evaluation.deletion_curves(
                ersm, images_labels,
                orders=("learned", "magnitude", "random", "gradcam"),
                most_important_first=most_first,
                steps=config.deletion_steps, seed=seed,
                baseline=baseline, verbose=verbose,
            ))
    fill = grey_fill_value(config.backbone)
    with phase(phases, "Measuring occlusion by grey squares (baseline, "
               "then ERSM)"):
        metrics["occlusion"] = on_both(
            lambda model: evaluation.occlusion_robustness(
                model, images_labels, config.occlusion_fractions,
                fill_value=fill, seed=seed, verbose=verbose,
            ))
    if len(test.element_spec) == 3:  # with object masks
        metrics.update(_object_metrics(baseline, ersm, test, fill, on_test,
                                       on_both, phases, verbose))
        metrics.update(_pxap_iou_and_relative_occlusion(
            baseline, ersm, data, config, fill, on_test, phases, verbose))
    if "test_shuffled" in data:
        shuffled = data["test_shuffled"].map(lambda *example: example[:2])
        with phase(phases, "Measuring background reliance (test, then "
                   "test_shuffled; baseline, then ERSM)"):
            metrics["background"] = on_both(
                lambda model: evaluation.background_reliance(
                    model, images_labels, shuffled, verbose=verbose,
                ),
                split="test vs test_shuffled",
            )
    return metrics


def _object_metrics(baseline, ersm, test, fill, on_test, on_both, phases,
                    verbose):
    """The measurements that need object masks: occlusion of the object's
    box, where the kept tokens fall, and localisation."""
    metrics = {}
    with phase(phases, "Measuring occlusion of the object's box "
               "(baseline, then ERSM)"):
        metrics["object_occlusion"] = on_both(
            lambda model: evaluation.object_occlusion(
                model, test, region="box", fill_value=fill, verbose=verbose,
            ))
    with phase(phases, "Measuring where the kept tokens fall (ERSM)"):
        metrics["object_tokens"] = on_test(
            evaluation.object_token_statistics(ersm, test, verbose=verbose))
    maps = {
        "ersm_mask": (evaluation.ersm_maps(ersm), False),
        "gradcam_baseline": (evaluation.gradcam_maps(baseline), True),
        "magnitude_ersm": (evaluation.magnitude_maps(ersm), True),
        "whole_image": (evaluation.whole_image_maps(), False),
    }
    with phase(phases, "Measuring localisation (ERSM mask, baseline "
               "Grad-CAM, feature magnitude, whole image)"):
        metrics["localization"] = {
            name: on_test(evaluation.localization_scores(
                map_fn, test, normalize=normalize, verbose=verbose,
            ))
            for name, (map_fn, normalize) in maps.items()
        }
    return metrics


def _pxap_iou_and_relative_occlusion(baseline, ersm, data, config, fill,
                                     on_test, phases, verbose):
    """Threshold-free localisation, IoU at a threshold chosen on the
    validation split, and occlusion placed relative to the object."""
    metrics = {}
    seed = config.seed
    test = data["test"]
    # Soft keep probabilities, not the binary mask: a ranking to score.
    maps = {
        "ersm_keep": evaluation.ersm_maps(ersm, grid="keep"),
        "magnitude_ersm": evaluation.magnitude_maps(ersm),
        "gradcam_baseline": evaluation.gradcam_maps(baseline),
    }
    grid = _token_grid(ersm)
    with phase(phases, "Measuring PxAP and IoU at a threshold chosen on "
               "the validation split (ERSM keep probabilities, feature "
               "magnitude, baseline Grad-CAM)"):
        metrics["pxap"] = {
            name: on_test(evaluation.pxap(map_fn, test, grid_shape=grid,
                                          verbose=verbose))
            for name, map_fn in maps.items()
        }
        if "validation" in data:
            held_out = VALIDATION_SPLITS.get(config.dataset, "validation")
            metrics["validated_localization"] = {
                name: on_test({
                    **evaluation.validated_iou(map_fn, data["validation"],
                                               test, verbose=verbose),
                    "validation_split": held_out,
                })
                for name, map_fn in maps.items()
            }
    splits = {name: data[name] for name in ("test", "test_shuffled")
              if name in data}
    box_fractions = sorted({*config.occlusion_fractions, BOX_QUARTER})
    with phase(phases, "Measuring occlusion off, over part of and over the "
               f"whole object ({', '.join(splits)}; baseline, then ERSM)"):
        metrics["object_relative_occlusion"] = {
            split: {
                name: _annotate(evaluation.object_relative_occlusion(
                    model, dataset, config.occlusion_fractions,
                    box_fractions, fill_value=fill, seed=seed,
                    verbose=verbose,
                ), split, seed)
                for name, model in (("baseline", baseline), ("ersm", ersm))
            }
            for split, dataset in splits.items()
        }
    return metrics


def example_maps(baseline, ersm, data, count):
    """Images, object masks, ERSM masks and baseline Grad-CAM for figures."""
    images, labels, *rest = next(iter(data["test"].unbatch().batch(count)))
    return {
        "images": np.asarray(images),
        "labels": np.asarray(labels),
        "object_masks": np.asarray(rest[0]) if rest else None,
        "ersm_mask": np.asarray(evaluation.ersm_maps(ersm)(images, labels)),
        "gradcam": np.asarray(
            evaluation.normalize_maps(
                evaluation.gradcam_maps(baseline)(images, labels)
            )
        ),
    }


def evaluate_and_report(baseline, ersm, data, config, output_dir,
                        histories=None, started=None, *, phases=None):
    """Measure every claim on both models and write the report; `phases`
    announces each measurement and the report (see `evaluate_pair`)."""
    from keras_ersm import report

    started = time.time() if started is None else started
    metrics = evaluate_pair(baseline, ersm, data, config, phases=phases)
    metrics["training"] = histories or {
        name: run_folder.read_history(output_dir, name)
        for name in run_folder.MODEL_NAMES
    }
    metrics["config"] = config.to_dict()
    metrics["mask_layers"] = [
        layer.name for layer in graph.energy_masks(ersm)
    ]
    metrics["runtime_seconds"] = round(time.time() - started, 1)
    with phase(phases, "Writing the report"):
        examples = example_maps(baseline, ersm, data,
                                config.num_examples_shown)
        return report.write_report(metrics, examples, output_dir)


def evaluate_run(output_dir, *, phases=None):
    """`ersm evaluate`: the report of a trained run folder; `phases`
    announces building the offline benchmark where it is not yet built,
    loading the run, each measurement and the report."""
    config = run_folder.load_config(output_dir)
    benchmark_phase(phases, config,
                    0 if phases is None else phases.verbose)
    with phase(phases, "Loading the run (models and data)"):
        baseline, ersm = run_folder.load_models(output_dir)
        data = load_data(config)
    return evaluate_and_report(
        baseline, ersm, data, config, output_dir, phases=phases
    )
