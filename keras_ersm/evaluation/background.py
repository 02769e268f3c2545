"""Reliance on a spurious background: accuracy with backgrounds shuffled."""

from keras_ersm.evaluation.accuracy import count_top1


def background_reliance(model, test, test_shuffled):
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

    Returns:
        A dict `{"test": float, "test_shuffled": float, "drop": float,
        "num_images": {"test": int, "test_shuffled": int}}` where
        `drop = test - test_shuffled` (positive: the model relies on the
        background).

    Example:

    >>> background_reliance(model, test, test_shuffled)["drop"]
    0.12
    """
    clean = count_top1(model, test, "background_reliance", "test")
    shuffled = count_top1(model, test_shuffled, "background_reliance",
                          "test_shuffled")
    return {
        "test": clean["accuracy"],
        "test_shuffled": shuffled["accuracy"],
        "drop": clean["accuracy"] - shuffled["accuracy"],
        "num_images": {
            "test": clean["num_images"],
            "test_shuffled": shuffled["num_images"],
        },
    }
