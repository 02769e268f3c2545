"""Aggregating run folders over seeds: `ersm summarize RUN...`.

Runs whose configs differ only in `seed` form one group. Every measurement
is reported as mean ± standard deviation over the group's seeds, and each
target is judged per seed and for the group, with the spread across seeds:
a comparison between two models holds for the group only when it holds on
average and in every seed (paired by seed), so one lucky run cannot carry it.
"""

import json
import os

import numpy as np

from keras_ersm.mask_options import MaskOptions
from keras_ersm.report.claims import box_quarter_accuracy

MAPS = {"ERSM keep probabilities": "ersm_keep",
        "feature magnitude": "magnitude_ersm",
        "baseline Grad-CAM": "gradcam_baseline"}
MODELS = {"baseline": "baseline", "ERSM": "ersm"}


def _relative(split, model, get):
    """A measurement of `object_relative_occlusion` on `split` of `model`."""
    return lambda m: get(m["object_relative_occlusion"][split][model])


def _relative_occlusion_measurements():
    measurements = {}
    for split in ("test", "test_shuffled"):
        for label, get in (
            ("clean accuracy", lambda r: r["clean_accuracy"]),
            ("(a) clutter off the object's box, mean accuracy",
             lambda r: np.mean(r["clutter"]["accuracy"])),
            ("(b) a quarter of the object's box hidden, accuracy",
             box_quarter_accuracy),
            ("(b) 10-50% of the object's box hidden, mean accuracy",
             lambda r: np.mean(r["box_part"]["accuracy"])),
            ("(c) the whole box hidden, accuracy",
             lambda r: r["whole_box"]["accuracy"]),
        ):
            for name, model in MODELS.items():
                measurements[f"{split}, {label}: {name}"] = _relative(
                    split, model, get)
    return measurements

# name -> (function of a run's metrics, format)
MEASUREMENTS = {
    "baseline accuracy": lambda m: m["accuracy"]["baseline"]["accuracy"],
    "ERSM accuracy": lambda m: m["accuracy"]["ersm"]["accuracy"],
    "mean mask value": lambda m: m["sparsity"]["mean_value"],
    "kept fraction (mask > 0.5)":
        lambda m: m["sparsity"]["kept_fraction"]["mean"],
    "per-image std / mean of the kept fraction":
        lambda m: m["object_tokens"]["kept_fraction"]["relative_std"],
    "images keeping nothing": lambda m: m["object_tokens"]["empty_images"],
    "effective kept fraction":
        lambda m: m["object_tokens"]["effective_kept_fraction"],
    "precision: kept tokens on the object":
        lambda m: m["object_tokens"]["kept_on_object"],
    "coverage: object tokens kept":
        lambda m: m["object_tokens"]["object_tokens_kept"],
    "Spearman(kept fraction, object area)":
        lambda m: m["object_tokens"]["spearman_kept_vs_area"],
    "IoU: ERSM mask": lambda m: m["localization"]["ersm_mask"]["iou_mean"],
    "IoU: baseline Grad-CAM":
        lambda m: m["localization"]["gradcam_baseline"]["iou_mean"],
    "IoU: feature magnitude":
        lambda m: m["localization"]["magnitude_ersm"]["iou_mean"],
    **{
        f"PxAP: {label}": (lambda m, k=key: m["pxap"][k]["pxap"])
        for label, key in MAPS.items()
    },
    **{
        f"IoU at the validation threshold: {label}": (
            lambda m, k=key: m["validated_localization"][k]["iou_mean"])
        for label, key in MAPS.items()
    },
    **{
        f"validation threshold: {label}": (
            lambda m, k=key: m["validated_localization"][k]["threshold"])
        for label, key in MAPS.items()
    },
    "grey squares over 10-50% of the image, mean accuracy: baseline":
        lambda m: np.mean(m["occlusion"]["baseline"]["accuracy"]),
    "grey squares over 10-50% of the image, mean accuracy: ERSM":
        lambda m: np.mean(m["occlusion"]["ersm"]["accuracy"]),
    "object's box covered, accuracy: baseline":
        lambda m: m["object_occlusion"]["baseline"]["accuracy"],
    "object's box covered, accuracy: ERSM":
        lambda m: m["object_occlusion"]["ersm"]["accuracy"],
    **_relative_occlusion_measurements(),
    "test_shuffled drop: baseline":
        lambda m: m["background"]["baseline"]["drop"],
    "test_shuffled drop: ERSM": lambda m: m["background"]["ersm"]["drop"],
    **{
        f"deletion area, {direction.replace('_', ' ')}: {order}": (
            lambda m, d=direction, o=order:
            m["deletion"][d]["curves"][o]["area"]
        )
        for direction in ("most_important_first", "least_important_first")
        for order in ("learned", "magnitude", "random", "gradcam")
    },
}


def _value(metrics, get):
    try:
        return float(get(metrics))
    except (KeyError, TypeError, ZeroDivisionError):
        return float("nan")


def _area(m, direction, order):
    return m["deletion"][direction]["curves"][order]["area"]


def _lead(results, key, leader, *others):
    """How far `leader`'s `key` in `results` (one measurement's results by
    map) is above the largest of the `others`'."""
    return results[leader][key] - max(results[other][key] for other in others)


def _clutter_loss(m, model):
    """Clean accuracy on `test` minus the mean under clutter off the box."""
    result = m["object_relative_occlusion"]["test"][model]
    return result["clean_accuracy"] - np.mean(result["clutter"]["accuracy"])


# name -> (per-seed check of one run's metrics, how the group is judged:
# "mean" checks the seeds' mean metrics, "every" needs every seed).
TARGETS = {
    "accuracy within 1 point of the baseline (no seed 2 points below)": (
        lambda m: m["accuracy"]["ersm"]["accuracy"]
        - m["accuracy"]["baseline"]["accuracy"],
        lambda diffs: np.mean(diffs) >= -0.01 and np.min(diffs) >= -0.02,
    ),
    "kept fraction in [0.03, 0.60]": (
        lambda m: m["sparsity"]["kept_fraction"]["mean"],
        lambda values: 0.03 <= np.mean(values) <= 0.60,
    ),
    "at most 5% of images keep nothing": (
        lambda m: m["object_tokens"]["empty_images"],
        lambda values: np.mean(values) <= 0.05,
    ),
    "per-image std at least 20% of the mean kept fraction": (
        lambda m: m["object_tokens"]["kept_fraction"]["relative_std"],
        lambda values: np.mean(values) >= 0.2,
    ),
    "at least 45% of kept tokens on the object": (
        lambda m: m["object_tokens"]["kept_on_object"],
        lambda values: np.mean(values) >= 0.45,
    ),
    "mask IoU at least that of Grad-CAM and of feature magnitude": (
        lambda m: _lead(m["localization"], "iou_mean", "ersm_mask",
                        "gradcam_baseline", "magnitude_ersm"),
        lambda diffs: np.mean(diffs) >= 0 and np.min(diffs) >= 0,
    ),
    "test_shuffled drop 10 points smaller than the baseline's, every seed": (
        lambda m: m["background"]["baseline"]["drop"]
        - m["background"]["ersm"]["drop"],
        lambda diffs: np.min(diffs) >= 0.10,
    ),
    "deletion, most important first: learned <= magnitude and <= random - "
    "0.05": (
        lambda m: min(
            _area(m, "most_important_first", "magnitude"),
            _area(m, "most_important_first", "random") - 0.05,
        ) - _area(m, "most_important_first", "learned"),
        lambda diffs: np.mean(diffs) >= 0 and np.min(diffs) >= 0,
    ),
    "coverage: at least 60% of the object's tokens kept": (
        lambda m: m["object_tokens"]["object_tokens_kept"],
        lambda values: np.mean(values) >= 0.60,
    ),
    "precision: at least 85% of kept tokens on the object": (
        lambda m: m["object_tokens"]["kept_on_object"],
        lambda values: np.mean(values) >= 0.85,
    ),
    "PxAP of the keep probabilities above magnitude's and Grad-CAM's, "
    "every seed": (
        lambda m: _lead(m["pxap"], "pxap", "ersm_keep", "magnitude_ersm",
                        "gradcam_baseline"),
        lambda diffs: np.min(diffs) > 0,
    ),
    "IoU at the validation threshold: keep probabilities above magnitude "
    "and Grad-CAM, every seed": (
        lambda m: _lead(m["validated_localization"], "iou_mean", "ersm_keep",
                        "magnitude_ersm", "gradcam_baseline"),
        lambda diffs: np.min(diffs) > 0,
    ),
    "(a) test, clutter off the object's box: ERSM loses no more than the "
    "baseline": (
        lambda m: _clutter_loss(m, "baseline") - _clutter_loss(m, "ersm"),
        lambda diffs: np.mean(diffs) >= 0,
    ),
    "(b) test, a quarter of the object's box hidden: ERSM keeps at least 85% "
    "of its clean accuracy": (
        lambda m: box_quarter_accuracy(
            m["object_relative_occlusion"]["test"]["ersm"])
        / m["object_relative_occlusion"]["test"]["ersm"]["clean_accuracy"],
        lambda values: np.mean(values) >= 0.85,
    ),
    "grey squares over 10-50% of the image: ERSM mean accuracy within 10 "
    "points of the baseline's or above": (
        lambda m: np.mean(m["occlusion"]["ersm"]["accuracy"])
        - np.mean(m["occlusion"]["baseline"]["accuracy"]),
        lambda diffs: np.mean(diffs) >= -0.10,
    ),
    "deletion, least important first: learned >= magnitude and random": (
        lambda m: _area(m, "least_important_first", "learned") - max(
            _area(m, "least_important_first", "magnitude"),
            _area(m, "least_important_first", "random"),
        ),
        lambda diffs: np.mean(diffs) >= 0 and np.min(diffs) >= 0,
    ),
}


def _describe(config):
    mask = (f"{config['formulation']}, {config['gate']} gate, "
            f"output scaling {config['output_scaling']}")
    if config.get("authors_dynamics"):
        mask += ", the authors' dynamics"
    backbone = config["backbone"] + (
        f" ({config['weights']} weights, frozen)"
        if config.get("freeze_backbone") else " (trained)")
    return (f"{mask}; lambda {config['unary_weight']:g}, gamma "
            f"{config['pairwise_weight']:g}, T {config['temperature']:.3g}; "
            f"{backbone}, {config['epochs']} epochs")


def summarize_runs(run_dirs):
    """Read each run's `config.json` and `metrics.json` and aggregate them.

    Args:
        run_dirs: folders written by `ersm train` + `ersm evaluate` (or
            `ersm demo`).

    Returns:
        A JSON-serialisable dict `{"groups": [...]}`, one group per
        configuration (all fields but `seed` equal): `description`, `runs`,
        `seeds`, `measurements` `{name: {"mean", "std", "per_seed"}}` and
        `targets` `{name: {"per_seed": [bool], "met": bool}}`.
    """
    groups = {}
    for run in run_dirs:
        paths = [os.path.join(run, name)
                 for name in ("config.json", "metrics.json")]
        missing = [path for path in paths if not os.path.isfile(path)]
        if missing:
            raise ValueError(
                f"summarize: {run} is not an evaluated run folder (missing "
                f"{', '.join(missing)}); run `ersm train` and `ersm "
                "evaluate` into it first."
            )
        with open(paths[0]) as file:
            # Filled in, runs saved before an option existed group with
            # those that name its default.
            config = MaskOptions.with_defaults(json.load(file))
        with open(paths[1]) as file:
            metrics = json.load(file)
        key = json.dumps({k: v for k, v in config.items() if k != "seed"},
                         sort_keys=True)
        groups.setdefault(key, []).append((run, config, metrics))
    summary = []
    for members in groups.values():
        members.sort(key=lambda member: member[1]["seed"])
        runs = [metrics for _, _, metrics in members]
        measurements = {}
        for name, get in MEASUREMENTS.items():
            values = [_value(metrics, get) for metrics in runs]
            if all(np.isnan(values)):
                continue
            measurements[name] = {
                "mean": float(np.nanmean(values)),
                "std": float(np.nanstd(values)),
                "per_seed": values,
            }
        targets = {}
        for name, (get, judge) in TARGETS.items():
            values = [_value(metrics, get) for metrics in runs]
            if any(np.isnan(values)):
                targets[name] = {"per_seed": values, "met": None}
                continue
            targets[name] = {
                "per_seed": [bool(judge([value])) for value in values],
                "values": values,
                "met": bool(judge(values)),
            }
        summary.append({
            "description": _describe(members[0][1]),
            "runs": [run for run, _, _ in members],
            "seeds": [config["seed"] for _, config, _ in members],
            "measurements": measurements,
            "targets": targets,
        })
    return {"groups": summary}


def _verdict(met):
    return {True: "met", False: "not met", None: "not measured"}[met]


def _mean_std(value):
    """"mean ± std", with the number of seeds where some lack the value
    (runs evaluated before it was measured)."""
    measured = int(np.sum(~np.isnan(value["per_seed"])))
    text = f"{value['mean']:.3f} ± {value['std']:.3f}"
    if measured < len(value["per_seed"]):
        text += f" ({measured} of {len(value['per_seed'])} seeds)"
    return text


def summary_markdown(summary):
    """The summary as Markdown: one table of measurements (a column per
    group) and one of targets with per-seed verdicts."""
    groups = summary["groups"]
    lines = []
    for index, group in enumerate(groups, 1):
        lines.append(f"{index}. {group['description']}: seeds "
                     f"{group['seeds']} ({', '.join(group['runs'])})")
    header = "| measurement | " + " | ".join(
        str(index) for index in range(1, len(groups) + 1)) + " |"
    rule = "|---" * (len(groups) + 1) + "|"
    lines += ["", header, rule]
    names = list(dict.fromkeys(
        name for group in groups for name in group["measurements"]))
    for name in names:
        cells = []
        for group in groups:
            value = group["measurements"].get(name)
            cells.append("—" if value is None else _mean_std(value))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| target (per seed) | " + " | ".join(
        str(index) for index in range(1, len(groups) + 1)) + " |", rule]
    for name in TARGETS:
        cells = []
        for group in groups:
            target = group["targets"][name]
            seeds = "/".join("✓" if ok else "✗" for ok in target["per_seed"]
                             ) if target["met"] is not None else ""
            cells.append(f"{_verdict(target['met'])} ({seeds})"
                         if seeds else _verdict(target["met"]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
