"""The experiment report: metrics.json, report.md, report.html and figures.

`write_report` writes them; `claims` judges the paper's claims, `content`
says what the report shows, `formats` writes it as Markdown and HTML,
`figures` draws the figures and `summary` aggregates runs over seeds.

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

import json
import os
import warnings

from keras_ersm.report import figures
from keras_ersm.report.claims import box_quarter_accuracy
from keras_ersm.report.claims import claim_summaries
from keras_ersm.report.claims import fair_occlusion_split
from keras_ersm.report.content import CLAIM_4_READING
from keras_ersm.report.content import CLAIM_4_READING_WITHOUT_SHUFFLED
from keras_ersm.report.content import report_blocks
from keras_ersm.report.formats import html
from keras_ersm.report.formats import markdown

METRICS_VERSION = 1
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
        for kind, content in report_blocks(metrics, figure_files)
    ]
    with open(os.path.join(output_dir, "report.md"), "w") as file:
        file.write(markdown(blocks))
    with open(os.path.join(output_dir, "report.html"), "w") as file:
        file.write(html(blocks))
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
