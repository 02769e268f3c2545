"""Reliance on a spurious background: accuracy with backgrounds shuffled."""

from keras_ersm.evaluation.accuracy import count_top1


def background_reliance(model, test, test_shuffled, *, verbose=0):
    """Accuracy on a test split and on the same split with backgrounds shuffled.

    In the ERSM benchmark the training backgrounds correlate with the label;
    `test_shuffled` breaks that correlation. A model that looks at the object
    keeps its accuracy; one that uses the background loses it.

    Args:
        model: a `keras.Model` mapping images to class scores.
        test: batched `tf.data.Dataset` of the split with the training
            correlation.
        test_shuffled: batched `tf.data.Dataset` of the split with
            backgrounds independent of the label.
        verbose: 0 (silent, default), 1 or 2: a `keras.utils.Progbar`
            over the batches, as the `verbose` of `model.evaluate` (one for
            each split), showing the accuracy so far.

    Returns:
        A dict `{"test": float, "test_shuffled": float, "drop": float,
        "num_images": {"test": int, "test_shuffled": int}}` where
        `drop = test - test_shuffled` (positive: the model relies on the
        background).

    Example:

    >>> result = background_reliance(model, test, test_shuffled)
    >>> result["drop"] == result["test"] - result["test_shuffled"]
    True
    >>> result["num_images"]
    {'test': 8, 'test_shuffled': 8}
    """
    clean = count_top1(model, test, "`background_reliance`", "test", verbose)
    shuffled = count_top1(model, test_shuffled, "`background_reliance`",
                          "test_shuffled", verbose)
    return {
        "test": clean["accuracy"],
        "test_shuffled": shuffled["accuracy"],
        "drop": clean["accuracy"] - shuffled["accuracy"],
        "num_images": {
            "test": clean["num_images"],
            "test_shuffled": shuffled["num_images"],
        },
    }
