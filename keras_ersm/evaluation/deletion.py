"""Deletion curves: accuracy as feature-map tokens are removed in order.

The authors' protocol (arXiv 2604.06893): zero the `k` tokens of the map that
feeds the head, for `k = 0 .. N`, in some order, feed the head without
rescaling, and record top-1 accuracy. Orders are given as per-token
*priorities* on the token grid; the tokens with the lowest priority go first:

* `"learned"`: the ERSM mask (lowest first), ties broken by the layer's
  keep probability `sigmoid(-z / T)`: a binary mask (hard-concrete gates)
  ranks its dropped and its kept tokens by the score that decided them,
* `"magnitude"`: the L2 norm of the unmasked token (lowest first),
* `"random"`: a seeded uniform random priority,
* `"gradcam"`: Grad-CAM of the unmasked baseline model, pooled to the token
  grid (lowest first).

Two directions:

* least important first (`most_important_first=False`, the authors'
  test): a good ranking keeps accuracy while the unimportant tokens go, so
  a **higher** area is better;
* most important first (`most_important_first=True`, the faithfulness
  test): a faithful ranking destroys accuracy fastest, so a **lower** area
  is better.

The area is the trapezoid over `x = k / N` in `[0, 1]`, `y` = accuracy.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from keras_ersm.evaluation import splitting
from keras_ersm.evaluation.curves import curve_area
from keras_ersm.evaluation.data import iterate_batches
from keras_ersm.evaluation.gradcam import gradcam_from_split
from keras_ersm.evaluation.maps import GRADCAM_TARGETS
from keras_ersm.evaluation.maps import MASK_GRIDS
from keras_ersm.evaluation.tokens import check_patch_size
from keras_ersm.evaluation.tokens import expand_token_grid
from keras_ersm.evaluation.tokens import resize_maps
from keras_ersm.evaluation.tokens import token_norms
from keras_ersm import graph
from keras_ersm import validation

DELETION_ORDERS = ("learned", "magnitude", "random", "gradcam")


@dataclasses.dataclass(frozen=True)
class DeletionCurve:
    """Accuracy after deleting `k` tokens, for each `k` of a grid.

    Attributes:
        order: str, the name of the ranking.
        most_important_first: bool; False: lowest priority deleted first
            (higher area is better), True: highest first (lower is better).
        num_deleted: list of int `k`, increasing from 0 to `num_tokens`.
        fractions: list of float `k / num_tokens`.
        accuracy: list of float, top-1 accuracy after deleting `k` tokens.
        area: float in `[0, 1]`, trapezoidal area under accuracy(fraction).
        num_tokens: int, tokens per image `N`.
        num_images: int.
    """

    order: str
    most_important_first: bool
    num_deleted: list
    fractions: list
    accuracy: list
    area: float
    num_tokens: int
    num_images: int

    def to_dict(self):
        """The curve as a JSON-serialisable dict of the attributes."""
        return dataclasses.asdict(self)


def deletion_steps(num_tokens, steps=40):
    """The numbers of deleted tokens `k` at which a curve is sampled.

    Args:
        num_tokens: int >= 1, tokens per image `N`.
        steps: `None` for every `k = 0 .. N`, or an int >= 1: `steps + 1`
            evenly spaced `k` from 0 to `N` (every `k` when `N <= steps`).

    Returns:
        int numpy array, strictly increasing from 0 to `N`.

    Example:

    >>> deletion_steps(4).tolist()
    [0, 1, 2, 3, 4]
    >>> deletion_steps(100, steps=4).tolist()
    [0, 25, 50, 75, 100]
    """
    validation.check_integer("`deletion_steps`", "num_tokens", num_tokens,
                             minimum=1)
    validation.check_integer("`deletion_steps`", "steps", steps, minimum=1,
                             optional=True)
    if steps is None or num_tokens <= steps:
        return np.arange(num_tokens + 1)
    grid = np.round(np.linspace(0, num_tokens, steps + 1)).astype(int)
    return np.unique(grid)


def deletion_ranks(priorities, most_important_first=False):
    """Deletion rank of every token: rank `r` is deleted when `k > r`.

    Ties are broken by token index (row-major), so ranks are a permutation
    of `0 .. N - 1` in every image.

    Args:
        priorities: float tensor `(B, h, w)`; lowest first, or highest first
            with `most_important_first=True`.
        most_important_first: bool.

    Returns:
        int32 tensor `(B, h, w)`.

    Example:

    >>> ranks = deletion_ranks(tf.constant([[[0.3, 0.1], [0.2, 0.4]]]))
    >>> ranks.numpy().tolist()
    [[[2, 0], [1, 3]]]
    """
    priorities = tf.cast(priorities, tf.float32)
    shape = tf.shape(priorities)
    flat = tf.reshape(priorities, (shape[0], -1))
    if most_important_first:
        flat = -flat
    order = tf.argsort(flat, axis=-1, stable=True)
    ranks = tf.argsort(order, axis=-1, stable=True)
    return tf.reshape(tf.cast(ranks, tf.int32), shape)


def tie_broken_priorities(priorities, tie_breaker):
    """Priorities that order tokens by `priorities`, ties by `tie_breaker`.

    Args:
        priorities: float tensor `(B, h, w)`.
        tie_breaker: float tensor `(B, h, w)`, compared where `priorities`
            are equal (remaining ties: by token index).

    Returns:
        float32 tensor `(B, h, w)`: each token's rank `0 .. N - 1` in that
        lexicographic order, lowest first.

    Example:

    >>> tie_broken_priorities(tf.constant([[[1.0, 0.0], [1.0, 0.0]]]),
    ...                       tf.constant([[[0.9, 0.2], [0.6, 0.1]]])
    ...                       ).numpy().tolist()
    [[[3.0, 1.0], [2.0, 0.0]]]
    """
    shape = tf.shape(priorities)
    flat = tf.reshape(tf.cast(priorities, tf.float32), (shape[0], -1))
    ties = tf.reshape(tf.cast(tie_breaker, tf.float32), (shape[0], -1))
    # Two stable sorts, the secondary key first: a lexicographic order.
    by_tie = tf.argsort(ties, axis=-1, stable=True)
    within = tf.argsort(tf.gather(flat, by_tie, batch_dims=1), axis=-1,
                        stable=True)
    order = tf.gather(by_tie, within, batch_dims=1)
    ranks = tf.argsort(order, axis=-1, stable=True)
    return tf.reshape(tf.cast(ranks, tf.float32), shape)


def deletion_correct(head, features, labels, priorities, num_deleted,
                     patch_size=1, most_important_first=False):
    """Correct predictions of `head` on one batch for each number deleted.

    Args:
        head: a `keras.Model` from feature maps to class scores.
        features: float tensor `(B, H, W, C)`, the map the head consumes.
        labels: int tensor `(B,)`.
        priorities: float tensor `(B, H/p, W/p)`, see `deletion_ranks`.
        num_deleted: ints `k`, numbers of tokens to delete.
        patch_size: int, side of a token in feature-map positions.
        most_important_first: bool.

    Returns:
        int64 numpy array, the number of correct images for each `k`.

    Example:

    A head that predicts the channel with the larger mean, and one image
    of class 1 whose class-1 evidence is a single token:

    >>> head = keras.Sequential([keras.layers.GlobalAveragePooling2D()])
    >>> features = np.stack([np.full((2, 2), 0.5), [[4.0, 0.0], [0.0, 0.0]]],
    ...                     axis=-1)[None].astype("float32")
    >>> deletion_correct(head, features, [1], features[..., 1], [0, 1],
    ...                  most_important_first=True).tolist()
    [1, 0]
    """
    check_patch_size(features, patch_size, "`deletion_correct`")
    grid = tuple(features.shape[1:3])
    grid = (grid[0] // patch_size, grid[1] // patch_size)
    if tuple(priorities.shape[1:]) != grid:
        raise validation.invalid(
            "`deletion_correct`", "priorities", f"on the token grid {grid} "
            f"of the features with patch_size={patch_size}",
            received=f"priorities of shape {tuple(priorities.shape)}",
        )
    ranks = deletion_ranks(priorities, most_important_first)
    labels = tf.cast(labels, tf.int32)
    correct = []
    for k in num_deleted:
        keep = expand_token_grid(tf.cast(ranks >= int(k), features.dtype),
                                 patch_size)
        scores = head(features * keep, training=False)
        hits = tf.equal(tf.argmax(scores, axis=-1, output_type=tf.int32),
                        labels)
        correct.append(int(tf.reduce_sum(tf.cast(hits, tf.int32))))
    return np.asarray(correct, dtype=np.int64)


def _make_curve(order, most_important_first, num_deleted, correct,
                num_tokens, num_images):
    fractions = np.asarray(num_deleted, dtype=np.float64) / num_tokens
    accuracy = correct / float(num_images)
    return DeletionCurve(
        order=order,
        most_important_first=bool(most_important_first),
        num_deleted=[int(k) for k in num_deleted],
        fractions=fractions.tolist(),
        accuracy=accuracy.tolist(),
        area=curve_area(fractions, accuracy),
        num_tokens=int(num_tokens),
        num_images=int(num_images),
    )


def deletion_curve(head, features, labels, priorities, *, patch_size=1,
                   steps=40, most_important_first=False, batch_size=64,
                   order="custom"):
    """Deletion curve of one ranking over precomputed feature maps.

    Shared by every model and ranking: for the ERSM model pass the masked
    map (the mask layer's output) and the head after the mask layer; for a
    baseline, its last feature map and the rest of the network.

    Args:
        head: a `keras.Model` from feature maps to class scores.
        features: float array `(num_images, H, W, C)`.
        labels: int array `(num_images,)`.
        priorities: float array `(num_images, H/p, W/p)`: tokens with the
            lowest priority are deleted first (highest first with
            `most_important_first=True`).
        patch_size: int, side of a token in feature-map positions.
        steps: see `deletion_steps`.
        most_important_first: bool.
        batch_size: int >= 1, images per forward pass of the head.
        order: str, the name recorded in the result.

    Returns:
        A `DeletionCurve`.

    Example:

    The head and image of `deletion_correct`'s example, tokens ranked by
    their norm:

    >>> head = keras.Sequential([keras.layers.GlobalAveragePooling2D()])
    >>> features = np.stack([np.full((2, 2), 0.5), [[4.0, 0.0], [0.0, 0.0]]],
    ...                     axis=-1)[None].astype("float32")
    >>> curve = deletion_curve(head, features, [1],
    ...                        np.linalg.norm(features, axis=-1),
    ...                        most_important_first=True, order="magnitude")
    >>> curve.fractions, curve.accuracy, curve.area
    ([0.0, 0.25, 0.5, 0.75, 1.0], [1.0, 0.0, 0.0, 0.0, 0.0], 0.125)
    """
    validation.check_integer("`deletion_curve`", "batch_size", batch_size,
                             minimum=1)
    features = tf.convert_to_tensor(features)
    labels = tf.convert_to_tensor(labels)
    priorities = tf.convert_to_tensor(priorities)
    num_images = int(features.shape[0])
    if num_images == 0 or labels.shape[0] != num_images or (
        priorities.shape[0] != num_images
    ):
        raise validation.invalid(
            "`deletion_curve`", "features", "images (at least one), as many "
            "as of `labels` and `priorities`",
            received=f"{features.shape[0]}, {labels.shape[0]} and "
            f"{priorities.shape[0]} images",
        )
    num_tokens = int(np.prod(priorities.shape[1:]))
    num_deleted = deletion_steps(num_tokens, steps)
    correct = np.zeros(len(num_deleted), dtype=np.int64)
    for start in range(0, num_images, batch_size):
        stop = start + batch_size
        correct += deletion_correct(
            head, features[start:stop], labels[start:stop],
            priorities[start:stop], num_deleted, patch_size,
            most_important_first,
        )
    return _make_curve(order, most_important_first, num_deleted, correct,
                       num_tokens, num_images)


def _check_orders(orders, has_mask, has_baseline):
    caller = "`deletion_curves`"
    expected = f"a non-empty sequence of names from {DELETION_ORDERS}"
    if isinstance(orders, str):
        raise validation.invalid(
            caller, "orders", f"{expected}, not one name", orders,
            hint=f"Pass orders=({orders!r},).",
        )
    orders = tuple(orders)
    if not orders or any(order not in DELETION_ORDERS for order in orders):
        raise validation.invalid(caller, "orders", expected, orders)
    if "learned" in orders and not has_mask:
        raise validation.invalid(
            caller, "orders", "without 'learned' for a model without an "
            "EnergyMask layer", orders,
        )
    if "gradcam" in orders and has_mask and not has_baseline:
        raise validation.invalid(
            caller, "baseline", "the unmasked baseline model when `orders` "
            "has 'gradcam' for an ERSM model: its Grad-CAM ranks the tokens",
            None,
        )
    return orders


def _deletion_point(caller, model, has_mask, mask_layer, feature_layer,
                    patch_size):
    """`(features, energy_mask, head, patch_size)`: the model cut where its
    tokens are deleted. For an ERSM model, `features` ends at the input of
    its `EnergyMask` layer `energy_mask` and `head` starts at its output;
    otherwise `energy_mask` is None and the cut is at `feature_layer`."""
    if not has_mask:
        features, head = splitting.split_at_layer(model, feature_layer)
        return features, None, head, 1 if patch_size is None else patch_size
    split = splitting.split_at_mask(model, mask_layer)
    # The tokens deleted are those of the mask layer, on its grid.
    mask_patch_size = split.mask_layer.options.patch_size
    why = (f"for an ERSM model, whose mask layer "
           f"'{split.mask_layer.name}' has the tokens deleted")
    if feature_layer is not None:
        raise validation.invalid(caller, "feature_layer", f"None {why}",
                                 feature_layer)
    if patch_size not in (None, mask_patch_size):
        raise validation.invalid(
            caller, "patch_size", f"None or {mask_patch_size} {why}",
            patch_size,
        )
    return split.features, split.mask_layer, split.head, mask_patch_size


def _priorities(features, grid, energy_mask, mask_grid, patch_size, rng, *,
                cam, images, classes):
    """`(deleted_from, priorities)` of one batch: the map the tokens are
    deleted from, and each order's token priorities on `grid`."""
    deleted_from = features
    priorities = {}
    if energy_mask is not None:
        grids = energy_mask.explain(features)
        # The layer's own output (with its "mask_mass" scaling, if any):
        # with nothing deleted the head gives the model's output.
        deleted_from = tf.cast(energy_mask(features, training=False),
                               tf.float32)
        priorities["learned"] = tie_broken_priorities(
            grids[mask_grid], grids["keep"])
    priorities["magnitude"] = token_norms(features, patch_size)
    priorities["random"] = tf.constant(
        rng.random((features.shape[0],) + grid), tf.float32
    )
    if cam is not None:
        cams = gradcam_from_split(*cam, images, classes)
        priorities["gradcam"] = resize_maps(cams, grid, method="area")
    return deleted_from, priorities


class _DeletionTally:
    """Correct answers of every order at every number deleted, summed over
    the batches of `deletion_curves`: its running state and its result."""

    def __init__(self, caller, orders, steps, most_important_first):
        self.caller = caller
        self.orders = orders
        self.steps = steps
        self.most_important_first = most_important_first
        # Set by the first batch: its token grid fixes the curves' steps.
        self.num_tokens = None
        self.num_deleted = None
        self.correct = None
        self.num_images = 0

    def start_batch(self, grid):
        """Count on the token grid `grid` of the next batch: the first
        batch's, or one with as many tokens."""
        num_tokens = grid[0] * grid[1]
        if self.num_tokens is None:
            self.num_tokens = num_tokens
            self.num_deleted = deletion_steps(num_tokens, self.steps)
            self.correct = {
                order: np.zeros(len(self.num_deleted), np.int64)
                for order in self.orders
            }
        elif num_tokens != self.num_tokens:
            raise validation.invalid(
                self.caller, "dataset", "batches of one token grid",
                received=f"a batch with the token grid {grid} after "
                f"batches of {self.num_tokens} tokens",
            )

    def add(self, head, deleted_from, labels, priorities, patch_size):
        """Count the batch `deleted_from` (the map its tokens are deleted
        from) for every order of `priorities`."""
        for order in self.orders:
            self.correct[order] += deletion_correct(
                head, deleted_from, labels, priorities[order],
                self.num_deleted, patch_size, self.most_important_first,
            )
        self.num_images += int(deleted_from.shape[0])

    def curve(self, order):
        return _make_curve(order, self.most_important_first,
                           self.num_deleted, self.correct[order],
                           self.num_tokens, self.num_images)

    def running_areas(self):
        """The progress bar's values: each order's area so far."""
        return [(order, self.curve(order).area) for order in self.orders]

    def result(self, seed):
        """The result of `deletion_curves`."""
        if self.num_images == 0:
            raise validation.invalid(self.caller, "dataset",
                                     "a non-empty dataset",
                                     received="an empty one")
        return {
            "direction": ("most_important_first" if self.most_important_first
                          else "least_important_first"),
            "higher_is_better": not self.most_important_first,
            "num_images": self.num_images,
            "num_tokens": self.num_tokens,
            "seed": seed,
            "steps": None if self.steps is None else int(self.steps),
            "curves": {order: self.curve(order).to_dict()
                       for order in self.orders},
        }


def deletion_curves(
    model,
    dataset,
    *,
    orders=("learned", "magnitude", "random"),
    most_important_first=False,
    steps=40,
    seed=0,
    baseline=None,
    baseline_layer=None,
    gradcam_target="predicted",
    mask_layer=None,
    mask_grid="mask",
    feature_layer=None,
    patch_size=None,
    verbose=0,
):
    """Deletion curves of a model over a dataset, for several rankings.

    For a model with an `EnergyMask` layer (an ERSM model) the tokens are
    those of the mask layer (its `patch_size`), deleted from its output (the
    masked map) before the head. For a model without one, they are the
    `patch_size` x `patch_size` patches of the `feature_layer` output
    (default: the last 4-D feature map). Every ranking is computed per
    image, on the same batch, and every curve sees the same images.

    Args:
        model: a functional `keras.Model` (one input, one output).
        dataset: batched `tf.data.Dataset` of `(images, labels)` or
            `(images, labels, object_masks)`.
        orders: names from `("learned", "magnitude", "random", "gradcam")`.
            "learned" needs an ERSM model; "gradcam" on an ERSM model needs
            `baseline` (on a baseline model it uses the model itself).
        most_important_first: bool; False (default): the authors' deletion,
            higher area is better; True: the faithfulness variant, lower
            area is better.
        steps: see `deletion_steps`.
        seed: int, seed of the "random" order.
        baseline: `None`, or the unmasked model whose Grad-CAM ranks the
            tokens for "gradcam"; it is pooled ("area" resize) onto the
            token grid.
        baseline_layer: `None` or the name of the baseline's Grad-CAM layer
            (default: its last 4-D feature map).
        gradcam_target: `"predicted"` (Grad-CAM of the baseline's top
            class, default) or `"label"` (of the true class).
        mask_layer: `None` for the first `EnergyMask`, or its name.
        mask_grid: `"mask"` (what the layer applies; equal to `keep` for
            the "reference" formulation) or `"keep"` (`sigmoid(-z / T)`,
            the authors' ranking by `z`) for the "learned" order.
        feature_layer: for a model without `EnergyMask`, `None` or the name
            of the layer whose output tokens are deleted (an ERSM model's
            tokens are its mask layer's: then it must be `None`).
        patch_size: token side for a model without `EnergyMask` (`None`:
            1); for an ERSM model `None` or the mask layer's `patch_size`.
        verbose: 0 (silent, default), 1 or 2: a `keras.utils.Progbar`
            over the batches, as the `verbose` of `model.evaluate`, showing
            each ranking's curve area so far.

    Returns:
        A JSON-serialisable dict: `"direction"` (`"least_important_first"`
        or `"most_important_first"`), `"higher_is_better"` (bool),
        `"num_images"`, `"num_tokens"`, `"seed"`, `"steps"`, and
        `"curves"`: `{order: DeletionCurve.to_dict()}` with keys `order`,
        `most_important_first`, `num_deleted`, `fractions`, `accuracy`,
        `area`, `num_tokens`, `num_images`.

    Example:

    `model` an ERSM model, `baseline` the same network without the mask,
    `test` a dataset of both's inputs:

    >>> result = deletion_curves(model, test, baseline=baseline,
    ...                          orders=("learned", "magnitude", "random",
    ...                                  "gradcam"))
    >>> sorted(result["curves"]), result["higher_is_better"]
    (['gradcam', 'learned', 'magnitude', 'random'], True)
    """
    caller = "`deletion_curves`"
    validation.check_choice(caller, "gradcam_target", gradcam_target,
                            GRADCAM_TARGETS)
    validation.check_choice(caller, "mask_grid", mask_grid, MASK_GRIDS)
    seed = validation.check_integer(caller, "seed", seed, minimum=0)
    has_mask = mask_layer is not None or bool(graph.energy_masks(model))
    orders = _check_orders(orders, has_mask, baseline is not None)
    features_model, energy_mask, head, patch_size = _deletion_point(
        caller, model, has_mask, mask_layer, feature_layer, patch_size
    )
    cam = None
    if "gradcam" in orders:
        cam = splitting.split_at_layer(
            baseline if has_mask else model,
            baseline_layer if has_mask else feature_layer,
        )
    rng = np.random.default_rng(seed)
    tally = _DeletionTally(caller, orders, steps, most_important_first)
    for images, labels, _ in iterate_batches(
        dataset, caller, verbose=verbose, values=tally.running_areas
    ):
        features = tf.cast(features_model(images, training=False), tf.float32)
        check_patch_size(features, patch_size, caller)
        grid = (features.shape[1] // patch_size,
                features.shape[2] // patch_size)
        tally.start_batch(grid)
        deleted_from, priorities = _priorities(
            features, grid, energy_mask, mask_grid, patch_size, rng,
            cam=cam, images=images,
            classes=labels if gradcam_target == "label" else None,
        )
        tally.add(head, deleted_from, labels, priorities, patch_size)
    return tally.result(seed)
