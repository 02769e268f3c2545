"""What the report says: its content as `(kind, content)` blocks, from a
run's metrics (`report_blocks`), for `formats` to write as Markdown or HTML.

Kinds: "h1", "h2", "p" (text), "img" (a figure's file name; `None` where it
was not drawn) and "table" (`{"header": [...], "rows": [[...], ...]}`).
"""

import numpy as np


def report_blocks(metrics, figure_files):
    """The report as a list of `(kind, content)` blocks, section by
    section; `figure_files` maps the figures' names to their files."""
    return (
        _summary_blocks(metrics)
        + _accuracy_blocks(metrics)
        + _deletion_blocks(metrics, figure_files["deletion"])
        + _occlusion_blocks(metrics, figure_files["occlusion"])
        + _localisation_blocks(metrics, figure_files["masks"])
        + _background_blocks(metrics)
        + _sparsity_blocks(metrics, figure_files["histogram"])
    )


def _summary_blocks(metrics):
    config = metrics["config"]
    return [
        ("h1", "ERSM report"),
        ("p", f"Dataset {config['dataset']}, backbone {config['backbone']} "
              f"(cut at {config['feature_layer']}, weights "
              f"{config['weights']}), image size {config['image_size']}, "
              f"{config['epochs']} epochs, formulation "
              f"{config['formulation']}, seed {config['seed']}; "
              f"runtime {metrics['runtime_seconds']} s."),
        ("h2", "Claims"),
        ("table", _table(
            ["claim", "verdict", "evidence"],
            [[c["claim"], c["verdict"], c["evidence"]]
             for c in metrics["claims"]],
        )),
    ]


def _accuracy_blocks(metrics):
    return _table_section(
        metrics, "accuracy", "Accuracy",
        ["model", "accuracy", "split", "images"],
        lambda name, r: [name, f"{r['accuracy']:.4f}", r["split"],
                         r["num_images"]],
    )


def _deletion_blocks(metrics, figure_file):
    return [
        ("h2", "Deletion"),
        ("table", _table(
            ["direction", "ranking", "area"],
            [[direction, order, f"{curve['area']:.4f}"]
             for direction, result in metrics["deletion"].items()
             for order, curve in result["curves"].items()],
        )),
        ("img", figure_file),
    ]


def _occlusion_blocks(metrics, figure_file):
    blocks = [
        ("h2", "Occlusion"),
        _table_by_name(
            ["model", "clean"] + [f"{f:.0%}" for f in
                                  metrics["occlusion"]["ersm"]["fractions"]],
            metrics["occlusion"],
            lambda name, r: [name, f"{r['clean_accuracy']:.4f}"]
            + [f"{a:.4f}" for a in r["accuracy"]],
        ),
        ("img", figure_file),
    ]
    if "object_occlusion" in metrics:
        blocks += [
            ("p", "Object covered by a grey box:"),
            _table_by_name(
                ["model", "clean", "object covered"],
                metrics["object_occlusion"],
                lambda name, r: [name, f"{r['clean_accuracy']:.4f}",
                                 f"{r['accuracy']:.4f}"],
            ),
        ]
    if "object_relative_occlusion" in metrics:
        blocks += _relative_occlusion_blocks(metrics)
    return blocks


CLAIM_4_READING = (
    "Which comparison can support claim 4 (robustness to structured "
    "occlusion): on this benchmark the background carries the label in "
    "`test` and the baseline reads it (its drop on `test_shuffled`, below), "
    "so grey squares over the object, or the whole box hidden, leave it its "
    "cue, and its accuracy under them rewards the shortcut. On "
    "`test_shuffled` the background carries no "
    "label: there clutter off the object's box (a) and part of the box "
    "hidden (b) compare what each model keeps of its reading of the object, "
    "and they are the fair comparisons. The whole box hidden (c) measures "
    "reliance on the object: a model that reads it falls towards chance."
)
CLAIM_4_READING_WITHOUT_SHUFFLED = (
    "Which comparison can support claim 4 (robustness to structured "
    "occlusion): part of the object's box hidden (b). Squares at random "
    "positions hide the background as often as the object, and a model that "
    "reads the background keeps its cue under them; the whole box hidden "
    "(c) measures reliance on the object: a model that reads it falls "
    "towards chance."
)


def _relative_occlusion_blocks(metrics):
    measured = metrics["object_relative_occlusion"]
    any_result = next(iter(next(iter(measured.values())).values()))
    box_fractions = any_result["box_part"]["fractions"]
    rows = []
    for split, results in measured.items():
        for name, r in results.items():
            rows.append(
                [split, name, f"{r['clean_accuracy']:.4f}",
                 f"{np.mean(r['clutter']['accuracy']):.4f}"]
                + [f"{a:.4f}" for a in r["box_part"]["accuracy"]]
                + [f"{r['whole_box']['accuracy']:.4f}"]
            )
    covered = any_result["clutter"]["covered_fractions"]
    return [
        ("p", "Occlusion relative to the object: (a) the squares above with "
              "the object's box left visible (mean over the fractions; they "
              f"cover {min(covered):.0%}–{max(covered):.0%} of the image once "
              "the box is cut out), (b) a random rectangle over a share of "
              "the box, (c) the whole box hidden:"),
        ("table", _table(
            ["split", "model", "clean", "(a) clutter"]
            + [f"(b) {f:.0%} of the box" for f in box_fractions]
            + ["(c) whole box"],
            rows,
        )),
        ("p", CLAIM_4_READING if "test_shuffled" in measured
         else CLAIM_4_READING_WITHOUT_SHUFFLED),
    ]


def _localisation_blocks(metrics, figure_file):
    return (_fixed_threshold_blocks(metrics) + _pxap_blocks(metrics)
            + _object_token_blocks(metrics) + [("img", figure_file)])


def _fixed_threshold_blocks(metrics):
    """IoU and pointing game of each map at its fixed threshold."""
    return _table_section(
        metrics, "localization", "Maps against the ground-truth object masks",
        ["map", "IoU", "fixed threshold", "pointing game"],
        lambda name, r: [name, f"{r['iou_mean']:.4f}", _fixed_threshold(r),
                         f"{r['pointing_accuracy']:.4f}"],
    )


def _pxap_blocks(metrics):
    """PxAP and IoU at the threshold chosen on validation data."""
    if "pxap" not in metrics:
        return []
    pxap = metrics["pxap"]
    validated = metrics.get("validated_localization", {})
    rows = []
    for name, r in pxap.items():
        v = validated.get(name)
        rows.append(
            [name, f"{r['pxap']:.4f}"]
            + (["—", "—", "—"] if v is None else
               [f"{v['iou_mean']:.4f}", f"{v['threshold']:.2f}",
                f"{v['validation_iou_mean']:.4f}"])
        )
    first = next(iter(pxap.values()))
    held_out = next(iter(validated.values()), {}).get("validation_split")
    return [
        ("p", "Threshold-free: PxAP, the area under the precision-recall "
              "curve of each map's tokens against the object's tokens "
              f"(at least {first['on_object']:.0%} object pixels; base "
              f"rate {first['base_rate']:.3f}, the PxAP of a constant "
              "map), every token of the split pooled, each map min-max "
              "normalised per image. IoU at the threshold that is best "
              + (f"on the `{held_out}` split" if held_out else
                 "on a validation split (not measured)")
              + ", never chosen on the test split:"),
        ("table", _table(
            ["map", "PxAP", "IoU at the validation threshold",
             "threshold", "IoU on validation"],
            rows,
        )),
    ]


def _object_token_blocks(metrics):
    """Where the mask's kept tokens fall (coverage and precision)."""
    tokens = metrics.get("object_tokens")
    if not tokens:
        return []
    return [
        ("p", "The ERSM mask keeps "
              f"{tokens['object_tokens_kept']:.3f} of the object's tokens "
              "(coverage), and "
              f"{tokens['kept_on_object']:.3f} of the tokens it keeps lie "
              "on the object (precision; base rate "
              f"{tokens['object_token_base_rate']:.3f})."),
    ]


def _background_blocks(metrics):
    return _table_section(
        metrics, "background", "Spurious background",
        ["model", "test", "test_shuffled", "drop"],
        lambda name, r: [name, f"{r['test']:.4f}", f"{r['test_shuffled']:.4f}",
                         f"{r['drop']:+.4f}"],
    )


def _sparsity_blocks(metrics, figure_file):
    kept = metrics["sparsity"]["kept_fraction"]
    return [
        ("h2", "Sparsity"),
        ("p", f"Kept fraction per image: mean {kept['mean']:.3f}, std "
              f"{kept['std']:.3f}, min {kept['min']:.3f}, max "
              f"{kept['max']:.3f}; mean mask entropy "
              f"{metrics['sparsity']['entropy_bits']:.3f} bits."),
        ("img", figure_file),
    ]


def _fixed_threshold(result):
    """How a `localization` result was thresholded, for its table."""
    if "threshold" not in result:
        return "—"
    return f"{result['threshold']:g}" + (
        " of the range" if result.get("normalized") else "")


def _table_section(metrics, key, title, header, row):
    """The section `title` tabling `metrics[key]` by name (see
    `_table_by_name`); none where `key` was not measured."""
    if key not in metrics:
        return []
    return [("h2", title), _table_by_name(header, metrics[key], row)]


def _table_by_name(header, results, row):
    """A table block with the row `row(name, result)` of every entry of
    `results` (one measurement's results by model or map)."""
    return ("table", _table(header, [row(name, result)
                                     for name, result in results.items()]))


def _table(header, rows):
    return {"header": header, "rows": rows}
