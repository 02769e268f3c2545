"""Claim verdicts and report files from hand-made metrics."""

import json
import sys

import numpy as np
import pytest

from keras_ersm import report


def curve(area):
    return {"fractions": [0.0, 1.0], "accuracy": [area, area], "area": area}


def make_metrics(ersm_accuracy=0.80, learned_area=0.7, kept_std=0.2,
                 ersm_occlusion=(0.75, 0.6), ersm_iou=0.5, ersm_drop=0.1,
                 gradcam_iou=0.3, whole_image_iou=0.1):
    common = {"split": "test", "seed": 0, "num_images": 10}
    deletion = {
        direction: {
            **common, "higher_is_better": direction.startswith("least"),
            "curves": {"learned": curve(learned_area),
                       "magnitude": curve(0.5), "random": curve(0.4),
                       "gradcam": curve(0.6)},
        }
        for direction in ("least_important_first", "most_important_first")
    }
    return {
        "config": {"dataset": "ersm_benchmark", "backbone": "MobileNetV2",
                   "feature_layer": "x", "weights": None, "image_size": 32,
                   "epochs": 1, "formulation": "reference", "seed": 0},
        "runtime_seconds": 1.0,
        "accuracy": {"baseline": {**common, "accuracy": 0.80},
                     "ersm": {**common, "accuracy": ersm_accuracy}},
        "sparsity": {**common, "kept_fraction": {
            "mean": 0.6, "std": kept_std, "min": 0.3, "max": 0.9},
            "kept_fraction_per_image": [0.3, 0.9],
            "entropy_bits": 0.5,
            "histogram": {"counts": [1, 2], "edges": [0.0, 0.5, 1.0]}},
        "deletion": deletion,
        "occlusion": {
            "baseline": {**common, "fractions": [0.1, 0.5],
                         "accuracy": [0.7, 0.5], "clean_accuracy": 0.8},
            "ersm": {**common, "fractions": [0.1, 0.5],
                     "accuracy": list(ersm_occlusion),
                     "clean_accuracy": 0.8},
        },
        "localization": {
            name: {**common, "iou_mean": iou, "pointing_accuracy": iou}
            for name, iou in (("ersm_mask", ersm_iou),
                              ("gradcam_baseline", gradcam_iou),
                              ("magnitude_ersm", 0.2),
                              ("whole_image", whole_image_iou))
        },
        "background": {
            "baseline": {**common, "test": 0.8, "test_shuffled": 0.5,
                         "drop": 0.3},
            "ersm": {**common, "test": 0.8, "test_shuffled": 0.8 - ersm_drop,
                     "drop": ersm_drop},
        },
    }


def verdicts(metrics):
    return {c["claim"].split()[0]: c["verdict"]
            for c in report.claim_summaries(metrics)}


def test_verdicts_follow_the_numbers():
    supported = verdicts(make_metrics())
    assert len(supported) == 6
    assert set(supported.values()) == {"supported"}
    # Baseline: occlusion accuracy mean 0.6, IoU 0.3 (Grad-CAM), drop 0.3.
    worse = verdicts(make_metrics(ersm_accuracy=0.7, learned_area=0.45,
                                  kept_std=0.0, ersm_occlusion=(0.6, 0.5),
                                  ersm_iou=0.2, ersm_drop=0.4))
    assert worse == dict.fromkeys(supported, "not supported")


def test_missing_localization_is_not_measured():
    metrics = make_metrics()
    del metrics["localization"]
    claims = {c["claim"].split()[0]: c for c in
              report.claim_summaries(metrics)}
    assert claims["interpretable"]["verdict"] == "not measured"
    assert claims["interpretable"]["evidence"] == (
        "the dataset has no object masks"
    )
    others = {k: c["verdict"] for k, c in claims.items()
              if k != "interpretable"}
    assert len(others) == 5 and set(others.values()) == {"supported"}


def test_differences_within_the_margin_are_not_wins():
    # Magnitude's area is 0.5: a learned area of 0.505 is within the margin.
    assert verdicts(make_metrics(learned_area=0.505))["deletion:"] == (
        "not supported"
    )
    assert verdicts(make_metrics(learned_area=0.52))["deletion:"] == (
        "supported"
    )
    # Each ERSM number below is better than the baseline's (occlusion mean
    # 0.6, Grad-CAM IoU 0.3, background drop 0.3) by less than 0.01.
    within = verdicts(make_metrics(ersm_occlusion=(0.705, 0.505),
                                   ersm_iou=0.305, ersm_drop=0.295))
    assert within["robustness"] == "not supported"
    assert within["interpretable"] == "not supported"
    assert within["less"] == "not supported"


def test_claims_against_a_baseline_at_chance_are_inconclusive():
    metrics = make_metrics()
    for model in ("baseline", "ersm"):
        metrics["accuracy"][model]["chance_accuracy"] = 0.1
    assert set(verdicts(metrics).values()) == {"supported"}
    metrics["accuracy"]["baseline"]["accuracy"] = 0.13
    metrics["accuracy"]["ersm"]["accuracy"] = 0.13
    claims = report.claim_summaries(metrics)
    assert {c["verdict"] for c in claims} == {"inconclusive"}
    assert claims[0]["evidence"].startswith(
        "the baseline is at chance accuracy (0.130, chance 0.100); ")
    del metrics["localization"]
    assert verdicts(metrics)["interpretable"] == "not measured"


def test_a_mask_must_beat_the_whole_image():
    # A mask that keeps every token scores the objects' share of the
    # image; maps normalised from constants score 0.
    kept_all = make_metrics(ersm_iou=0.25, gradcam_iou=0.0,
                            whole_image_iou=0.25)
    assert verdicts(kept_all)["interpretable"] == "not supported"
    assert verdicts(make_metrics(ersm_iou=0.27, gradcam_iou=0.0,
                                 whole_image_iou=0.25))["interpretable"] == (
        "supported")
    # Metrics written before the whole image was measured still read.
    del kept_all["localization"]["whole_image"]
    assert verdicts(kept_all)["interpretable"] == "supported"


def test_tied_deletion_orders_are_all_named_best():
    metrics = make_metrics(learned_area=0.5)
    claim = next(c for c in report.claim_summaries(metrics)
                 if c["claim"].startswith("deletion"))
    assert claim["evidence"].endswith("; best: gradcam")
    for curves in (metrics["deletion"]["least_important_first"]["curves"],):
        curves["gradcam"] = curve(0.5)
    claim = next(c for c in report.claim_summaries(metrics)
                 if c["claim"].startswith("deletion"))
    assert claim["evidence"].endswith("; best: learned = magnitude = gradcam")


def make_examples():
    rng = np.random.default_rng(0)
    return {
        "images": rng.random((2, 8, 8, 3)), "labels": np.array([1, 2]),
        "object_masks": rng.random((2, 8, 8, 1)) > 0.5,
        "ersm_mask": rng.random((2, 4, 4)), "gradcam": rng.random((2, 4, 4)),
    }


def test_without_matplotlib_the_report_is_written_without_figures(
        tmp_path, monkeypatch):
    # An import of matplotlib fails, as where the [demo] extra is missing.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.warns(UserWarning, match=r"The report's figures need "
                      r"matplotlib \(.*\)\. Install the optional "
                      r"dependencies with: pip install \"keras-ersm\[demo\]"
                      r"\"\. The report is written without figures\."):
        written = report.write_report(make_metrics(), make_examples(),
                                      str(tmp_path))
    with open(tmp_path / "metrics.json") as file:
        assert json.load(file)["claims"] == written["claims"]
    markdown = (tmp_path / "report.md").read_text()
    assert "| accuracy preserved" in markdown
    assert markdown.count("(Figure not drawn: matplotlib cannot be "
                          "imported;") == 4
    assert "Figure not drawn" in (tmp_path / "report.html").read_text()
    assert not list(tmp_path.glob("*.png"))


def test_write_report_files(tmp_path):
    examples = make_examples()
    written = report.write_report(make_metrics(), examples, str(tmp_path))
    with open(tmp_path / "metrics.json") as file:
        assert json.load(file)["claims"] == written["claims"]
    markdown = (tmp_path / "report.md").read_text()
    assert "| accuracy preserved" in markdown
    for name in ("deletion.png", "occlusion.png", "masks.png",
                 "keep_histogram.png"):
        assert (tmp_path / name).stat().st_size > 1000


@pytest.mark.parametrize("empty, relative_spread, expected", [
    (0.01, 0.2, "supported"),
    (0.2, 0.2, "not supported"),  # a fifth of the images keep nothing
    (0.01, 0.1, "not supported"),  # a near-fixed budget
])
def test_sparsity_needs_a_spread_and_something_kept_in_nearly_every_image(
    empty, relative_spread, expected
):
    metrics = make_metrics(kept_std=0.6 * relative_spread)
    metrics["object_tokens"] = {
        "empty_images": empty, "effective_kept_fraction": 0.5,
        "kept_on_object": 0.9, "object_token_base_rate": 0.15,
    }
    claims = {c["claim"]: c for c in report.claim_summaries(metrics)}
    sparsity = claims["emergent, input-dependent sparsity"]
    assert sparsity["verdict"] == expected
    assert f"images keeping nothing {empty:.3f}" in sparsity["evidence"]
    masks = claims["interpretable masks isolate the object"]["evidence"]
    assert "kept tokens on the object 0.900 (base rate 0.150)" in masks


def relative_occlusion(clean, clutter, parts, whole):
    return {"split": "test", "seed": 0, "num_images": 10,
            "clean_accuracy": clean,
            "clutter": {"fractions": [0.1, 0.5], "accuracy": clutter,
                        "covered_fractions": [0.08, 0.3]},
            "box_part": {"fractions": [0.1, 0.25, 0.5], "accuracy": parts,
                         "covered_box_fractions": [0.1, 0.25, 0.5]},
            "whole_box": {"accuracy": whole, "covered_fraction": 0.2}}


def test_the_occlusion_claim_reads_the_fair_split_and_says_why(tmp_path):
    metrics = make_metrics()
    test = {"baseline": relative_occlusion(0.9, [0.6, 0.4], [0.9, 0.9, 0.8],
                                           0.9),
            "ersm": relative_occlusion(0.95, [0.95, 0.9], [0.9, 0.7, 0.4],
                                       0.2)}
    metrics["object_relative_occlusion"] = {"test": test}
    assert report.fair_occlusion_split(metrics) == "test"
    claim = report.claim_summaries(metrics)[3]
    assert claim["evidence"].endswith(
        "; on test: clean baseline 0.900, ERSM 0.950; clutter off the "
        "object's box (mean) baseline 0.500, ERSM 0.925; a quarter of the box "
        "hidden baseline 0.900, ERSM 0.700; the whole box hidden baseline "
        "0.900, ERSM 0.200")
    report.write_report(metrics, make_examples(), str(tmp_path))
    markdown = (tmp_path / "report.md").read_text()
    assert report.CLAIM_4_READING_WITHOUT_SHUFFLED in markdown
    assert ("| test | ersm | 0.9500 | 0.9250 | 0.9000 | 0.7000 | 0.4000 | "
            "0.2000 |") in markdown
    assert "they cover 8%–30% of the image" in markdown
    # With test_shuffled measured, the claim and the report read it.
    metrics["object_relative_occlusion"]["test_shuffled"] = {
        name: dict(result, split="test_shuffled")
        for name, result in test.items()}
    assert report.fair_occlusion_split(metrics) == "test_shuffled"
    assert "; on test_shuffled: clean" in (
        report.claim_summaries(metrics)[3]["evidence"])
    report.write_report(metrics, make_examples(), str(tmp_path))
    assert report.CLAIM_4_READING in (tmp_path / "report.md").read_text()


def test_a_quarter_of_the_box_is_read_where_measured():
    result = relative_occlusion(0.9, [0.6], [0.8, 0.7, 0.4], 0.2)
    assert report.box_quarter_accuracy(result) == 0.7
    result["box_part"]["fractions"] = [0.1, 0.3, 0.5]
    assert np.isnan(report.box_quarter_accuracy(result))


def test_pxap_and_validated_iou_are_tabled_with_their_threshold(tmp_path):
    metrics = make_metrics()
    common = {"split": "test", "seed": 0, "num_images": 10}
    metrics["pxap"] = {
        name: {**common, "pxap": value, "base_rate": 0.15, "on_object": 0.1}
        for name, value in (("ersm_keep", 0.62), ("magnitude_ersm", 0.585),
                            ("gradcam_baseline", 0.3))}
    metrics["validated_localization"] = {
        name: {**common, "iou_mean": 0.3, "threshold": 0.35,
               "validation_iou_mean": 0.31, "validation_split": "validation"}
        for name in metrics["pxap"]}
    metrics["object_tokens"] = {
        "kept_fraction": {"mean": 0.05, "std": 0.02, "relative_std": 0.4},
        "empty_images": 0.01, "effective_kept_fraction": 0.05,
        "kept_on_object": 0.925, "object_tokens_kept": 0.295,
        "object_token_base_rate": 0.15}
    report.write_report(metrics, make_examples(), str(tmp_path))
    markdown = (tmp_path / "report.md").read_text()
    assert "| ersm_keep | 0.6200 | 0.3000 | 0.35 | 0.3100 |" in markdown
    assert "at least 10% object pixels; base rate 0.150" in markdown
    assert "best on the `validation` split, never chosen on the test" in (
        markdown)
    assert ("keeps 0.295 of the object's tokens (coverage), and 0.925 of the "
            "tokens it keeps lie on the object (precision; base rate "
            "0.150)") in markdown
