"""Keras callbacks for models with `EnergyMask` layers."""

import importlib.util
import os

import keras
import numpy as np
import tensorflow as tf

from keras_ersm import graph
from keras_ersm import validation
from keras_ersm.energy import GRID_KEYS

# How strongly a dropped token (mask 0) is tinted red in the overlay.
_TINT = 0.6


class MaskTensorBoard(keras.callbacks.Callback):
    """Logs the masks of a fixed set of images to TensorBoard every epoch.

    At the end of every epoch (TensorBoard step = the epoch index, as for
    the epoch summaries of `keras.callbacks.TensorBoard`), for every
    `EnergyMask` `L` of the model (`L_call{i}` for each call of a mask
    called several times), on the images given:

    * image `L/overlay`: each image with what the mask drops tinted red
      (tint `0.6 * (1 - mask)`, the token grid resized to the image by
      nearest neighbour);
    * images `L/score`, `L/keep`, `L/energy`, `L/mask`: the token grids of
      `EnergyMask.explain` as grey images of the images' size; `keep` and
      `mask` as they are (in [0, 1]), `score` and `energy` min-max scaled
      over all the images of the epoch;
    * histogram `L/keep_histogram`: the keep values of every token;
    * scalar `L/kept_fraction`: the fraction of tokens whose mask is above
      0.5 (what `fit` logs as `L_kept_fraction`, on these images only).

    Images are shown min-max scaled per image, their first three channels
    as RGB (a single channel as grey), so preprocessed inputs show too.
    The masks are computed outside the training step, eagerly, with the
    model in inference mode, so the callback works with `jit_compile` and
    under `tf.distribute` strategies, and updates no metric. Summaries are
    written with `tf.summary`, also on the JAX backend.

    Needs the `tensorboard` package (`pip install tensorboard`), as
    `keras.callbacks.TensorBoard` does.

    The model must be functional with one input and its masks at the top
    level, as `build_classifier` and `attach` make them.

    Args:
        log_dir: str, the TensorBoard log folder; the summaries go to
            `log_dir/masks`, beside `keras.callbacks.TensorBoard`'s
            `log_dir/train` when both are given one folder.
        images: array `(n, height, width, channels)`, n >= 1, as the
            model takes them (e.g. a few test images).

    Example:

    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> masks = keras_ersm.callbacks.MaskTensorBoard("logs", images[:4])
    >>> history = model.fit(train, epochs=1, verbose=0, callbacks=[
    ...     keras.callbacks.TensorBoard("logs"), masks])

    and `tensorboard --logdir logs`.
    """

    def __init__(self, log_dir, images):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(
            log_dir
        ):
            raise validation.invalid(
                "MaskTensorBoard", "log_dir", "a folder path", log_dir,
            )
        images = np.asarray(keras.ops.convert_to_numpy(images), np.float32)
        if images.ndim != 4 or not images.shape[0] or not images.shape[-1]:
            raise validation.invalid(
                "MaskTensorBoard", "images", "a batch of images (n, height, "
                "width, channels) with n >= 1",
                received=f"shape {images.shape}",
            )
        if importlib.util.find_spec("tensorboard") is None:
            # tf.summary writes images and histograms only with it.
            raise ImportError(
                "MaskTensorBoard needs the tensorboard package: pip install "
                "tensorboard (or keras-ersm[tensorboard])."
            )
        self.log_dir = os.fspath(log_dir)
        self.images = images
        self._grids = None
        self._masks = []
        self._writer = None

    def on_train_begin(self, logs=None):
        inputs = len(keras.tree.flatten(self.model.input))
        if inputs != 1:
            # The model comes from `set_model(model)`: `fit`'s model.
            raise validation.invalid(
                "MaskTensorBoard", "model", "a model with one input",
                received=f"model '{self.model.name}', which has {inputs} "
                "inputs",
                hint="The callback feeds it one batch of images.",
            )
        self._grids = keras.Model(
            self.model.input,
            graph.grid_outputs("MaskTensorBoard", self.model, GRID_KEYS),
        )
        self._masks = graph.energy_masks(self.model)
        self._writer = tf.summary.create_file_writer(
            os.path.join(self.log_dir, "masks")
        )

    def on_epoch_end(self, epoch, logs=None):
        # The model's earlier masks run too: their kept-fraction counts are
        # put back as they were, so that the epoch's metric is unchanged.
        counts = [variable for layer in self._masks
                  for variable in (layer.kept_fraction.total,
                                   layer.kept_fraction.count)]
        before = [keras.ops.convert_to_numpy(v) for v in counts]
        # As the model takes it: a model built on [input] takes [images].
        grids = self._grids(
            keras.tree.pack_sequence_as(self.model.input, [self.images]),
            training=False,
        )
        for variable, value in zip(counts, before):
            variable.assign(value)
        shown = _displayed(self.images)
        with self._writer.as_default(step=epoch):
            for name, layer_grids in grids.items():
                values = {key: keras.ops.convert_to_numpy(grid)
                          for key, grid in layer_grids.items()}
                self._write(name, values, shown)
        self._writer.flush()

    def _write(self, name, grids, shown):
        count = len(shown)
        size = shown.shape[1:3]
        mask = _resized(grids["mask"], size)
        tint = _TINT * (1.0 - np.clip(mask, 0.0, 1.0))
        red = np.array([1.0, 0.0, 0.0], np.float32)
        tf.summary.image(f"{name}/overlay", shown * (1.0 - tint) + red * tint,
                         max_outputs=count)
        for key in GRID_KEYS:
            grid = grids[key]
            if key in ("score", "energy"):
                grid = _min_max(grid, axis=None)
            tf.summary.image(f"{name}/{key}",
                             np.clip(_resized(grid, size), 0.0, 1.0),
                             max_outputs=count)
        tf.summary.histogram(f"{name}/keep_histogram", grids["keep"])
        tf.summary.scalar(f"{name}/kept_fraction",
                          float(np.mean(grids["mask"] > 0.5)))

    def on_train_end(self, logs=None):
        self._writer.close()


def _min_max(values, axis):
    """`values` scaled to [0, 1] over `axis` (0 where they are constant)."""
    low = np.min(values, axis=axis, keepdims=True)
    span = np.max(values, axis=axis, keepdims=True) - low
    return np.where(span > 0, (values - low) / np.where(span > 0, span, 1),
                    0.0).astype(np.float32)


def _displayed(images):
    """RGB images in [0, 1]: min-max scaled per image, the first three
    channels (one channel repeated as grey)."""
    shown = _min_max(images, axis=(1, 2, 3))
    if shown.shape[-1] < 3:
        return np.repeat(shown[..., :1], 3, axis=-1)
    return shown[..., :3]


def _resized(grids, size):
    """Token grids `(n, h, w)` as images `(n, height, width, 1)`, each pixel
    taking the value of the token it falls in (nearest neighbour)."""
    rows = np.arange(size[0]) * grids.shape[1] // size[0]
    columns = np.arange(size[1]) * grids.shape[2] // size[1]
    return grids[:, rows][:, :, columns][..., None].astype(np.float32)
