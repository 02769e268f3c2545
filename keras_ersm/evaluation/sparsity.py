"""Emergent sparsity: how much of each input the ERSM mask keeps.

The paper claims there is no fixed sparsity budget: the kept fraction
adapts per input. `sparsity_statistics` reports its distribution over
inputs (a spread near zero means a de facto fixed budget), the binary
entropy of the mask values (near 0: decisive, near 1 bit: undecided) and a
histogram of the values.
"""

import numpy as np
import tensorflow as tf

from keras_ersm.evaluation.data import iterate_batches
from keras_ersm.evaluation.maps import ersm_maps
from keras_ersm import validation

PERCENTILES = (5, 25, 50, 75, 95)


def binary_entropy(values):
    """Binary entropy in bits of probabilities, elementwise.

    Args:
        values: float array in `[0, 1]`.

    Returns:
        float64 numpy array, `-v log2 v - (1 - v) log2 (1 - v)`, 0 at 0 and 1.

    Example:

    >>> binary_entropy([0.5, 1.0]).tolist()
    [1.0, 0.0]
    """
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -(
            values * np.log2(values) + (1.0 - values) * np.log2(1.0 - values)
        )
    return np.where((values <= 0.0) | (values >= 1.0), 0.0, entropy)


def sparsity_statistics(model, dataset, *, mask_layer=None, grid="mask",
                        threshold=0.5, bins=20, verbose=0):
    """Distribution of the kept fraction and of the mask values.

    Args:
        model: a functional ERSM `keras.Model`.
        dataset: batched `tf.data.Dataset` of `(images, labels)` or
            `(images, labels, object_masks)`.
        mask_layer: `None` for the first `EnergyMask`, or its name.
        grid: `"mask"` (what the layer applies) or `"keep"`, see
            `ersm_maps`.
        threshold: float, a token is kept when its value is > threshold.
        bins: int >= 1, histogram bins over `[0, 1]`.
        verbose: 0 (silent, default), 1 or 2: a `keras.utils.Progbar`
            over the batches, as the `verbose` of `model.evaluate`.

    Returns:
        A JSON-serialisable dict: `"kept_fraction"`: `{"mean", "std",
        "min", "max", "percentiles": {"5", "25", "50", "75", "95"}}` of the
        per-image fraction of tokens kept; `"kept_fraction_per_image"`
        (list); `"mean_value"` (mean mask value); `"entropy_bits"` (mean
        binary entropy of the mask values, in `[0, 1]`);
        `"histogram"`: `{"counts", "edges"}` of all mask values;
        `"threshold"`, `"grid"`, `"num_images"`, `"num_tokens"`.

    Example:

    An untrained `model` (the default start keeps about 95% of every
    token) keeps every token of every image:

    >>> stats = sparsity_statistics(model, test)
    >>> stats["kept_fraction"]["mean"], stats["kept_fraction"]["std"]
    (1.0, 0.0)
    """
    caller = "`sparsity_statistics`"
    validation.check_integer(caller, "bins", bins, minimum=1)
    threshold = validation.check_number(caller, "threshold", threshold,
                                        "a number in [0, 1)",
                                        lambda v: 0 <= v < 1)
    map_fn = ersm_maps(model, mask_layer, grid)
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.zeros(bins, np.int64)
    fractions = []
    value_sum = 0.0
    entropy_sum = 0.0
    num_values = 0
    num_tokens = None
    for images, labels, _ in iterate_batches(
        dataset, "`sparsity_statistics`", verbose=verbose
    ):
        values = tf.convert_to_tensor(map_fn(images, labels)).numpy()
        values = values.reshape(values.shape[0], -1).astype(np.float64)
        num_tokens = values.shape[1]
        fractions.append(np.mean(values > threshold, axis=1))
        counts += np.histogram(np.clip(values, 0.0, 1.0), bins=edges)[0]
        value_sum += float(values.sum())
        entropy_sum += float(binary_entropy(values).sum())
        num_values += values.size
    if not fractions:
        raise validation.invalid(caller, "dataset", "a non-empty dataset",
                                 received="an empty one")
    fractions = np.concatenate(fractions)
    return {
        "kept_fraction": {
            "mean": float(fractions.mean()),
            "std": float(fractions.std()),
            "min": float(fractions.min()),
            "max": float(fractions.max()),
            "percentiles": {
                str(q): float(np.percentile(fractions, q))
                for q in PERCENTILES
            },
        },
        "kept_fraction_per_image": fractions.tolist(),
        "mean_value": value_sum / num_values,
        "entropy_bits": entropy_sum / num_values,
        "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
        "threshold": float(threshold),
        "grid": grid,
        "num_images": int(fractions.size),
        "num_tokens": int(num_tokens),
    }
