"""The paper's claims judged from a run's metrics: one verdict and one line
of evidence each (`claim_summaries`)."""

import numpy as np

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
    baseline = metrics["accuracy"]["baseline"]
    chance = baseline.get("chance_accuracy")
    at_chance = (chance is not None
                 and baseline["accuracy"] < chance + CHANCE_MARGIN)
    summaries = []
    for judge in _CLAIMS:
        judged = judge(metrics)
        if judged is None:
            continue
        claim, holds, evidence = judged
        verdict = {True: "supported", False: "not supported"}.get(
            holds, "not measured"
        )
        if at_chance and holds is not None:
            verdict = "inconclusive"
            evidence = (f"the baseline is at chance accuracy "
                        f"({baseline['accuracy']:.3f}, chance {chance:.3f}); "
                        + evidence)
        summaries.append(
            {"claim": claim, "verdict": verdict, "evidence": evidence}
        )
    return summaries


# Each judge of a claim returns `(claim, holds, evidence)`: `holds` True,
# False or None (not measured); or None where the run cannot speak to it.

def _accuracy_claim(metrics):
    accuracy = metrics["accuracy"]
    base, ersm = accuracy["baseline"]["accuracy"], accuracy["ersm"]["accuracy"]
    return (
        "accuracy preserved (within 1 point of the baseline)",
        ersm >= base - MARGIN,
        f"baseline {base:.3f}, ERSM {ersm:.3f} ({ersm - base:+.3f})",
    )


def _sparsity_claim(metrics):
    kept = metrics["sparsity"]["kept_fraction"]
    tokens = metrics.get("object_tokens", {})
    empty = tokens.get("empty_images")
    # Sparse, varying with the input (a spread of at least a fifth of the
    # mean) and, where measured, keeping something of nearly every image.
    return (
        "emergent, input-dependent sparsity",
        kept["mean"] < 0.95 and kept["std"] >= 0.2 * kept["mean"] > 0
        and (empty is None or empty <= 0.05),
        f"kept fraction {kept['mean']:.3f} +- {kept['std']:.3f} across "
        f"images (min {kept['min']:.3f}, max {kept['max']:.3f})"
        + ("" if empty is None else
           f"; images keeping nothing {empty:.3f}; effective kept fraction "
           f"{tokens['effective_kept_fraction']:.3f}"),
    )


def _deletion_claim(metrics):
    curves = metrics["deletion"]["least_important_first"]["curves"]
    areas = {order: curve["area"] for order, curve in curves.items()}
    return (
        "deletion: learned ranking beats magnitude and random",
        areas["learned"] > max(areas["magnitude"], areas["random"]) + MARGIN,
        "areas (least important first, higher = better): "
        + ", ".join(f"{k} {v:.3f}" for k, v in areas.items())
        + "; best: " + " = ".join(
            order for order, area in areas.items()
            if area == max(areas.values())
        ),
    )


def _occlusion_claim(metrics):
    occlusion = metrics["occlusion"]
    base_occ = _mean(occlusion["baseline"]["accuracy"])
    ersm_occ = _mean(occlusion["ersm"]["accuracy"])
    return (
        "robustness to structured occlusion",
        ersm_occ > base_occ + MARGIN,
        f"mean accuracy under {occlusion['ersm']['fractions']} occlusion: "
        f"baseline {base_occ:.3f}, ERSM {ersm_occ:.3f}"
        + _relative_occlusion_evidence(metrics),
    )


def _localisation_claim(metrics):
    claim = "interpretable masks isolate the object"
    if "localization" not in metrics:
        return claim, None, "the dataset has no object masks"
    local = metrics["localization"]
    iou = {k: v["iou_mean"] for k, v in local.items()}
    pointing = {k: v["pointing_accuracy"] for k, v in local.items()}
    tokens = metrics.get("object_tokens", {})
    # The whole image: a token mask keeping every token scores its IoU.
    return (
        claim,
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


def _background_claim(metrics):
    if "background" not in metrics:
        return None
    drop = {k: v["drop"] for k, v in metrics["background"].items()}
    return (
        "less reliance on a spurious background",
        drop["ersm"] < drop["baseline"] - MARGIN,
        "accuracy drop test -> test_shuffled: "
        f"baseline {drop['baseline']:+.3f}, ERSM {drop['ersm']:+.3f}",
    )


# In the order the report lists them.
_CLAIMS = (_accuracy_claim, _sparsity_claim, _deletion_claim,
           _occlusion_claim, _localisation_claim, _background_claim)


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
