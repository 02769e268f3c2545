"""Shuffling whose order is a function of the seed and the epoch number."""

import keras
import tensorflow as tf

from keras_ersm import validation


class EpochOrder(keras.callbacks.Callback):
    """Shuffle a training pipeline in an order set by (seed, epoch).

    `tf.data`'s reshuffling draws the order of each pass from a random
    stream that starts anew in every process and advances with every pass
    (Keras also opens an extra pass at the end of each epoch). So a run
    resumed by `keras.callbacks.BackupAndRestore` sees other orders than the
    uninterrupted run would have, and two models trained one after the
    other on the same dataset object see different orders. A pipeline
    shuffled by an `EpochOrder` reads the epoch number this callback
    records as each epoch begins: epoch `e` always has the same order.

    Pass the same object to the loader (`order=`) and to `fit`'s callbacks,
    and let every epoch be one whole pass over the data (no
    `steps_per_epoch`, no `.repeat()`): Keras then starts a pass per epoch,
    after the callback has recorded its number. Passes made before any
    epoch was recorded (the callback not given to `fit`, or the data read
    outside it) take the next order of a count of passes, as `tf.data`
    would reshuffle them; once an epoch is recorded, passes outside `fit`
    (or in a `fit` without the callback) take that epoch's order.

    Example:

    With the loaders: `train = load_benchmark("train", 64, 32,
    order=order)`, then `model.fit(train, epochs=5, callbacks=[order,
    backup])`. Every pass in one epoch has one order:

    >>> order = EpochOrder()
    >>> numbers = order.shuffle(tf.data.Dataset.range(6), 6, seed=0)
    >>> order.on_epoch_begin(3)
    >>> first = list(numbers.as_numpy_iterator())
    >>> list(numbers.as_numpy_iterator()) == first
    True
    >>> sorted(int(number) for number in first)
    [0, 1, 2, 3, 4, 5]
    """

    def __init__(self):
        super().__init__()
        # -1: no epoch recorded yet.
        self.epoch = tf.Variable(-1, dtype=tf.int64, trainable=False)
        self.passes = tf.Variable(0, dtype=tf.int64, trainable=False)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch.assign(epoch)

    def shuffle(self, dataset, buffer_size, seed):
        """`dataset.shuffle(buffer_size)`, each pass in the order of
        (`seed`, the epoch when the pass starts).

        Args:
            dataset: a `tf.data.Dataset`, shuffled element by element (the
                loaders shuffle encoded examples, before decoding and
                batching).
            buffer_size: int, the shuffle buffer, as in
                `tf.data.Dataset.shuffle`.
            seed: int >= 0.

        Returns:
            A `tf.data.Dataset` of the same elements, and of the same
            cardinality when it is known.
        """
        # The order is a function of it: None (nondeterminism) is refused.
        seed = validation.check_integer("EpochOrder.shuffle", "seed", seed,
                                        minimum=0)

        def one_pass(_):
            # Traced into a graph of its own: this clears that graph's seed
            # only. The order is then set by (seed, epoch) alone, and a
            # tensor seed works (TensorFlow compares the pair of global and
            # op seeds to (0, 0) in Python, which fails for a tensor when
            # the global seed is 0).
            tf.random.set_seed(None)
            # Read as the pass starts, not when the pipeline is built.
            passes = self.passes.assign_add(1)
            epoch = self.epoch.read_value()
            key = tf.where(epoch >= 0, epoch, -passes)
            pass_seed = tf.random.stateless_uniform(
                (), seed=tf.stack([tf.constant(seed, tf.int64), key]),
                maxval=2**31 - 1, dtype=tf.int64,
            )
            return dataset.shuffle(
                buffer_size, seed=pass_seed, reshuffle_each_iteration=False
            )

        shuffled = tf.data.Dataset.from_tensors(0).flat_map(one_pass)
        cardinality = int(dataset.cardinality())
        if cardinality >= 0:
            shuffled = shuffled.apply(
                tf.data.experimental.assert_cardinality(cardinality)
            )
        return shuffled
