"""The experiment report: metrics.json, report.md, report.html and figures.

`metrics.json` schema (version `METRICS_VERSION`; keys only ever added).
Every measured block carries `split`, `num_images` and `seed`.

    schema_version: int
    config: the ExperimentConfig as a dict
    runtime_seconds: float
    mask_layers: [str]
    training: {model name: {metric: [per-epoch values]}}
    accuracy: {"baseline"|"ersm": {accuracy, chance_accuracy, num_images,
                split, seed}}
    sparsity: {kept_fraction: {mean, std, min, max, percentiles},
               kept_fraction_per_image, mean_value, entropy_bits,
               histogram: {counts, edges}, threshold, grid, num_images,
               num_tokens, split, seed}
    deletion: {"least_important_first"|"most_important_first":
               {direction, higher_is_better, num_images, num_tokens, seed,
                steps, split, curves: {"learned"|"magnitude"|"random"|
                "gradcam": {order, fractions, accuracy, area, ...}}}}
    occlusion: {"baseline"|"ersm": {fractions, covered_fractions, accuracy,
                clean_accuracy, fill_value, seed, num_images, split}}
    object_occlusion: (datasets with object masks) {"baseline"|"ersm":
                {accuracy, clean_accuracy, region, covered_fraction,
                fill_value, num_images, num_skipped, split, seed}}
    localization: (datasets with object masks) {"ersm_mask"|"gradcam_baseline"|
                "magnitude_ersm"|"whole_image": {iou_mean, iou_std,
                pointing_accuracy,
                threshold, normalized, num_images, num_skipped, split, seed}}
    object_tokens: (datasets with object masks) {kept_fraction: {mean, std,
                relative_std}, empty_images, effective_kept_fraction,
                kept_on_object (precision), object_tokens_kept (coverage),
                object_token_base_rate, spearman_kept_vs_area, threshold,
                on_object, num_images, split, seed}
    pxap: (datasets with object masks) {"ersm_keep"|"magnitude_ersm"|
                "gradcam_baseline": {pxap, base_rate, normalized, on_object,
                grid, num_tokens, num_images, num_skipped, split, seed}}
    validated_localization: (datasets with object masks) {"ersm_keep"|
                "magnitude_ersm"|"gradcam_baseline": {threshold, iou_mean,
                iou_std, validation_iou_mean, validation_curve: {thresholds,
                iou_mean}, normalized, method, num_images, num_skipped,
                validation_num_images, validation_split, split, seed}}
    object_relative_occlusion: (datasets with object masks) {"test"|
                "test_shuffled" (the ERSM benchmark): {"baseline"|"ersm":
                {clean_accuracy, clutter: {fractions, covered_fractions,
                accuracy}, box_part: {fractions, covered_box_fractions,
                accuracy}, whole_box: {accuracy, covered_fraction},
                fill_value, seed, num_images, num_skipped, split}}}
    background: (the ERSM benchmark) {"baseline"|"ersm": {test,
                test_shuffled, drop, num_images, split, seed}}
    claims: [{claim, verdict, evidence}]; verdicts "supported", "not
                supported", "not measured", and "inconclusive" for every
                claim when the baseline is at chance accuracy
"""

import html
import json
import os
import warnings

import numpy as np

from keras_ersm.report import figures

METRICS_VERSION = 1
# A difference smaller than this (one point of accuracy, IoU or area) is not
# counted as a win: the demo is one training run with one seed.
MARGIN = 0.01
# A baseline less than this above chance accuracy has learned too little
# (e.g. a smoke-test run) for any comparison with it to mean anything.
CHANCE_MARGIN = 0.05


def _mean(values):
    return float(np.mean(values))


def claim_summaries(metrics):
    """One line of evidence and a verdict per claim of the paper."""
    claims = []
    accuracy = metrics["accuracy"]
    base, ersm = accuracy["baseline"]["accuracy"], accuracy["ersm"]["accuracy"]
    chance = accuracy["baseline"].get("chance_accuracy")
    at_chance = chance is not None and base < chance + CHANCE_MARGIN

    def add(claim, holds, evidence):
        verdict = {True: "supported", False: "not supported"}.get(
            holds, "not measured"
        )
        if at_chance and holds is not None:
            verdict = "inconclusive"
            evidence = (f"the baseline is at chance accuracy ({base:.3f}, "
                        f"chance {chance:.3f}); " + evidence)
        claims.append(
            {"claim": claim, "verdict": verdict, "evidence": evidence}
        )

    add(
        "accuracy preserved (within 1 point of the baseline)",
        ersm >= base - MARGIN,
        f"baseline {base:.3f}, ERSM {ersm:.3f} ({ersm - base:+.3f})",
    )
    kept = metrics["sparsity"]["kept_fraction"]
    # Sparse, varying with the input (a spread of at least a fifth of the
    # mean) and, where measured, keeping something of nearly every image.
    tokens = metrics.get("object_tokens", {})
    empty = tokens.get("empty_images")
    add(
        "emergent, input-dependent sparsity",
        kept["mean"] < 0.95 and kept["std"] >= 0.2 * kept["mean"] > 0
        and (empty is None or empty <= 0.05),
        f"kept fraction {kept['mean']:.3f} +- {kept['std']:.3f} across "
        f"images (min {kept['min']:.3f}, max {kept['max']:.3f})"
        + ("" if empty is None else
           f"; images keeping nothing {empty:.3f}; effective kept fraction "
           f"{tokens['effective_kept_fraction']:.3f}"),
    )
    curves = metrics["deletion"]["least_important_first"]["curves"]
    areas = {order: curve["area"] for order, curve in curves.items()}
    add(
        "deletion: learned ranking beats magnitude and random",
        areas["learned"] > max(areas["magnitude"], areas["random"]) + MARGIN,
        "areas (least important first, higher = better): "
        + ", ".join(f"{k} {v:.3f}" for k, v in areas.items())
        + "; best: " + " = ".join(
            order for order, area in areas.items()
            if area == max(areas.values())
        ),
    )
    occlusion = metrics["occlusion"]
    base_occ = _mean(occlusion["baseline"]["accuracy"])
    ersm_occ = _mean(occlusion["ersm"]["accuracy"])
    add(
        "robustness to structured occlusion",
        ersm_occ > base_occ + MARGIN,
        f"mean accuracy under {occlusion['ersm']['fractions']} occlusion: "
        f"baseline {base_occ:.3f}, ERSM {ersm_occ:.3f}"
        + _relative_occlusion_evidence(metrics),
    )
    if "localization" in metrics:
        local = metrics["localization"]
        iou = {k: v["iou_mean"] for k, v in local.items()}
        pointing = {k: v["pointing_accuracy"] for k, v in local.items()}
        # The whole image: a token mask keeping every token scores its IoU.
        add(
            "interpretable masks isolate the object",
            iou["ersm_mask"] > max(
                iou["gradcam_baseline"], iou["magnitude_ersm"],
                # Absent from metrics written before it was measured.
                iou.get("whole_image", 0.0),
            ) + MARGIN,
            "IoU with the object: "
            + ", ".join(f"{k} {v:.3f}" for k, v in iou.items())
            + "; pointing game: "
            + ", ".join(f"{k} {v:.3f}" for k, v in pointing.items())
            + ("" if not tokens else
               f"; kept tokens on the object {tokens['kept_on_object']:.3f} "
               f"(base rate {tokens['object_token_base_rate']:.3f})"),
        )
    else:
        add("interpretable masks isolate the object", None,
            "the dataset has no object masks")
    if "background" in metrics:
        drop = {k: v["drop"] for k, v in metrics["background"].items()}
        add(
            "less reliance on a spurious background",
            drop["ersm"] < drop["baseline"] - MARGIN,
            "accuracy drop test -> test_shuffled: "
            f"baseline {drop['baseline']:+.3f}, ERSM {drop['ersm']:+.3f}",
        )
    return claims


def fair_occlusion_split(metrics):
    """The split of `object_relative_occlusion` whose background carries no
    label (`test_shuffled`), else `test`; `None` when it was not measured."""
    measured = metrics.get("object_relative_occlusion", {})
    for split in ("test_shuffled", "test"):
        if split in measured:
            return split
    return None


def box_quarter_accuracy(result):
    """Accuracy of one `object_relative_occlusion` result with a quarter of
    the object's box hidden (NaN where that share was not measured)."""
    part = result["box_part"]
    if 0.25 not in part["fractions"]:
        return float("nan")
    return part["accuracy"][part["fractions"].index(0.25)]


def _relative_occlusion_evidence(metrics):
    split = fair_occlusion_split(metrics)
    if split is None:
        return ""
    results = metrics["object_relative_occlusion"][split]

    def both(get):
        return (f"baseline {get(results['baseline']):.3f}, ERSM "
                f"{get(results['ersm']):.3f}")

    return (
        f"; on {split}: clean {both(lambda r: r['clean_accuracy'])}; "
        "clutter off the object's box (mean) "
        f"{both(lambda r: _mean(r['clutter']['accuracy']))}; a quarter of "
        f"the box hidden {both(box_quarter_accuracy)}; the whole box hidden "
        f"{both(lambda r: r['whole_box']['accuracy'])}"
    )


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
                 f"{_mean(r['clutter']['accuracy']):.4f}"]
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


def _localisation_blocks(metrics):
    blocks = []
    if "pxap" in metrics:
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
        blocks += [
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
    tokens = metrics.get("object_tokens")
    if tokens:
        blocks.append((
            "p", "The ERSM mask keeps "
                 f"{tokens['object_tokens_kept']:.3f} of the object's tokens "
                 "(coverage), and "
                 f"{tokens['kept_on_object']:.3f} of the tokens it keeps lie "
                 "on the object (precision; base rate "
                 f"{tokens['object_token_base_rate']:.3f})."))
    return blocks


def _fixed_threshold(result):
    """How a `localization` result was thresholded, for its table."""
    if "threshold" not in result:
        return "—"
    return f"{result['threshold']:g}" + (
        " of the range" if result.get("normalized") else "")


def _table(header, rows):
    return {"header": header, "rows": rows}


def _blocks(metrics, figure_files):
    """The report as a list of (kind, content) blocks for md and html."""
    config = metrics["config"]
    blocks = [
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
        ("h2", "Accuracy"),
        ("table", _table(
            ["model", "accuracy", "split", "images"],
            [[name, f"{r['accuracy']:.4f}", r["split"], r["num_images"]]
             for name, r in metrics["accuracy"].items()],
        )),
        ("h2", "Deletion"),
        ("table", _table(
            ["direction", "ranking", "area"],
            [[direction, order, f"{curve['area']:.4f}"]
             for direction, result in metrics["deletion"].items()
             for order, curve in result["curves"].items()],
        )),
        ("img", figure_files["deletion"]),
        ("h2", "Occlusion"),
        ("table", _table(
            ["model", "clean"] + [f"{f:.0%}" for f in
                                  metrics["occlusion"]["ersm"]["fractions"]],
            [[name, f"{r['clean_accuracy']:.4f}"]
             + [f"{a:.4f}" for a in r["accuracy"]]
             for name, r in metrics["occlusion"].items()],
        )),
        ("img", figure_files["occlusion"]),
    ]
    if "object_occlusion" in metrics:
        blocks += [
            ("p", "Object covered by a grey box:"),
            ("table", _table(
                ["model", "clean", "object covered"],
                [[name, f"{r['clean_accuracy']:.4f}", f"{r['accuracy']:.4f}"]
                 for name, r in metrics["object_occlusion"].items()],
            )),
        ]
    if "object_relative_occlusion" in metrics:
        blocks += _relative_occlusion_blocks(metrics)
    if "localization" in metrics:
        blocks += [
            ("h2", "Maps against the ground-truth object masks"),
            ("table", _table(
                ["map", "IoU", "fixed threshold", "pointing game"],
                [[name, f"{r['iou_mean']:.4f}", _fixed_threshold(r),
                  f"{r['pointing_accuracy']:.4f}"]
                 for name, r in metrics["localization"].items()],
            )),
        ]
    blocks += _localisation_blocks(metrics)
    blocks.append(("img", figure_files["masks"]))
    if "background" in metrics:
        blocks += [
            ("h2", "Spurious background"),
            ("table", _table(
                ["model", "test", "test_shuffled", "drop"],
                [[name, f"{r['test']:.4f}", f"{r['test_shuffled']:.4f}",
                  f"{r['drop']:+.4f}"]
                 for name, r in metrics["background"].items()],
            )),
        ]
    kept = metrics["sparsity"]["kept_fraction"]
    blocks += [
        ("h2", "Sparsity"),
        ("p", f"Kept fraction per image: mean {kept['mean']:.3f}, std "
              f"{kept['std']:.3f}, min {kept['min']:.3f}, max "
              f"{kept['max']:.3f}; mean mask entropy "
              f"{metrics['sparsity']['entropy_bits']:.3f} bits."),
        ("img", figure_files["histogram"]),
    ]
    return blocks


def _markdown(blocks):
    lines = []
    for kind, content in blocks:
        if kind in ("h1", "h2"):
            lines += ["#" * int(kind[1]) + " " + content, ""]
        elif kind == "p":
            lines += [content, ""]
        elif kind == "img":
            lines += [f"![{content}]({content})", ""]
        else:
            lines.append("| " + " | ".join(content["header"]) + " |")
            lines.append("|" + "---|" * len(content["header"]))
            for row in content["rows"]:
                lines.append("| " + " | ".join(str(v) for v in row) + " |")
            lines.append("")
    return "\n".join(lines)


def _html(blocks):
    parts = ["<!doctype html><meta charset='utf-8'><title>ERSM report</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
             "td,th{border:1px solid #ccc;padding:3px 8px}"
             "table{border-collapse:collapse}img{max-width:100%}</style>"]
    for kind, content in blocks:
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{html.escape(content)}</{kind}>")
        elif kind == "img":
            parts.append(f"<img src='{html.escape(content)}' alt=''>")
        else:
            header = "".join(f"<th>{html.escape(h)}</th>"
                             for h in content["header"])
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>"
                                 for v in row) + "</tr>"
                for row in content["rows"]
            )
            parts.append(f"<table><tr>{header}</tr>{rows}</table>")
    return "\n".join(parts)


FIGURE_NAMES = ("deletion", "occlusion", "masks", "histogram")


def write_report(metrics, examples, output_dir):
    """Write metrics.json, report.md, report.html and the figures.

    Args:
        metrics: the dict from `keras_ersm.experiment.evaluate_pair`, with
            `config`, `training`, `mask_layers` and `runtime_seconds` added.
        examples: the dict from `keras_ersm.experiment.example_maps`.
        output_dir: folder to write into.

    Returns:
        `metrics` with `schema_version` and `claims` added.
    """
    metrics = dict(metrics)
    metrics["schema_version"] = METRICS_VERSION
    metrics["claims"] = claim_summaries(metrics)
    # First: the measurements outlive a failure to draw them.
    with open(os.path.join(output_dir, "metrics.json"), "w") as file:
        json.dump(metrics, file, indent=2)
    try:
        figure_files = _draw_figures(metrics, examples, output_dir)
    except ImportError as error:
        warnings.warn(f"{error}. The report is written without figures.")
        figure_files = dict.fromkeys(FIGURE_NAMES)
    blocks = [
        ("p", f"(Figure not drawn: matplotlib cannot be imported; "
              f"{figures.INSTALL_HINT}.)")
        if kind == "img" and content is None else (kind, content)
        for kind, content in _blocks(metrics, figure_files)
    ]
    with open(os.path.join(output_dir, "report.md"), "w") as file:
        file.write(_markdown(blocks))
    with open(os.path.join(output_dir, "report.html"), "w") as file:
        file.write(_html(blocks))
    return metrics


def _draw_figures(metrics, examples, output_dir):
    """{figure name: PNG file name} of the report's figures."""
    return {
        "deletion": figures.deletion_figure(
            metrics["deletion"], os.path.join(output_dir, "deletion.png")
        ),
        "occlusion": figures.occlusion_figure(
            metrics["occlusion"], os.path.join(output_dir, "occlusion.png")
        ),
        "masks": figures.masks_figure(
            examples, os.path.join(output_dir, "masks.png"),
            backbone=metrics["config"]["backbone"],
        ),
        "histogram": figures.histogram_figure(
            metrics["sparsity"], os.path.join(output_dir, "keep_histogram.png")
        ),
    }
