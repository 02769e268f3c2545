"""Pure-numpy rendering of the ERSM benchmark: digits pasted on photographs.

Everything here is deterministic given a `numpy.random.Generator`, and the
optional dependencies (scikit-learn, scikit-image) are imported lazily so that
`import keras_ersm.datasets` works without them.
"""

import importlib

import numpy as np

from keras_ersm import validation

NUM_CLASSES = 10

# Photographs and textures bundled inside the scikit-image wheel (no pooch
# download). Index `i` is background id `i`; in the correlated splits it is
# the background most often paired with digit `i`. All are CC0 or public
# domain (see `ErsmBenchmark`'s docstring for per-image provenance).
BACKGROUND_NAMES = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "grass",
    "gravel",
    "hubble_deep_field",
    "retina",
    "rocket",
)

# Object side length as a fraction of the image side.
OBJECT_SCALE_RANGE = (0.35, 0.6)
# Square background crop side as a fraction of the photo's shorter side.
CROP_SCALE_RANGE = (0.3, 0.8)
# Minimum RGB distance (in [0, 1] units) between the object colour and the
# mean background colour under it, so that the object is always visible.
MIN_COLOUR_CONTRAST = 0.35

_INSTALL_HINT = 'pip install "keras-ersm[demo]"'


def _require(module_name, caller):
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(
            f"{caller} needs `{module_name.split('.')[0]}` to render the "
            f"ERSM benchmark. Install the optional dependencies with: "
            f"{_INSTALL_HINT}"
        ) from e


def load_digit_templates():
    """Loads scikit-learn's bundled handwritten digits as [0, 1] templates.

    Returns:
        A tuple `(templates, labels)`: float32 array of shape `(1797, 8, 8)`
        with values in `[0, 1]`, and int64 array of shape `(1797,)`.

    Example:

    >>> templates, labels = load_digit_templates()
    >>> templates.shape
    (1797, 8, 8)
    """
    sk_datasets = _require("sklearn.datasets", "`load_digit_templates`")
    digits = sk_datasets.load_digits()
    # The UCI digits are 4-bit counts (0..16) of set pixels per 4x4 block.
    templates = (digits.images / 16.0).astype(np.float32)
    return templates, digits.target.astype(np.int64)


def load_background_photos(min_side):
    """Loads the bundled scikit-image photos used as backgrounds.

    Each photo is converted to RGB and resized once so that its shorter
    side is `min_side` pixels (downscaled, unless `min_side` exceeds a
    photo's own); random crops are then cheap to resize.

    Args:
        min_side: int, the shorter side of every returned photo, in pixels.

    Returns:
        A list of `len(BACKGROUND_NAMES)` uint8 arrays of shape `(H, W, 3)`,
        in the order of `BACKGROUND_NAMES`.

    Example:

    >>> photos = load_background_photos(min_side=128)
    >>> [min(p.shape[:2]) for p in photos][:3]
    [128, 128, 128]
    """
    if int(min_side) < 1:
        raise validation.invalid("`load_background_photos`", "min_side",
                                 "an integer >= 1", min_side)
    sk_data = _require("skimage.data", "`load_background_photos`")
    sk_transform = _require("skimage.transform", "`load_background_photos`")
    photos = []
    for name in BACKGROUND_NAMES:
        photo = getattr(sk_data, name)()
        if photo.ndim == 2:
            photo = np.stack([photo] * 3, axis=-1)
        photo = photo[..., :3]
        scale = min_side / min(photo.shape[:2])
        shape = (
            max(min_side, round(photo.shape[0] * scale)),
            max(min_side, round(photo.shape[1] * scale)),
        )
        photo = sk_transform.resize(
            photo, shape, order=1, anti_aliasing=True, preserve_range=True
        )
        photos.append(np.clip(np.round(photo), 0, 255).astype(np.uint8))
    return photos


def assign_backgrounds(labels, correlation, rng, num_backgrounds=NUM_CLASSES):
    """Pairs each label with a background id at an exact correlation rate.

    Exactly `round(correlation * len(labels))` examples, chosen at random,
    get the background whose id equals their label; every other example gets
    a background drawn uniformly from the remaining `num_backgrounds - 1` ids.

    Args:
        labels: int array of shape `(n,)` with values in
            `[0, num_backgrounds)`.
        correlation: float in `[0, 1]`, the fraction of matched examples.
        rng: `numpy.random.Generator`.
        num_backgrounds: int, the number of background ids.

    Returns:
        int64 array of shape `(n,)` of background ids.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> ids = assign_backgrounds(np.arange(10), 0.5, rng)
    >>> int((ids == np.arange(10)).sum())
    5
    """
    if not 0.0 <= correlation <= 1.0:
        raise validation.invalid("`assign_backgrounds`", "correlation",
                                 "a number in [0, 1]", correlation)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_backgrounds):
        raise validation.invalid(
            "`assign_backgrounds`", "labels",
            f"integers in [0, {num_backgrounds})",
            received=f"labels in [{labels.min()}, {labels.max()}]",
        )
    n = labels.shape[0]
    matched = np.zeros(n, dtype=bool)
    matched[rng.permutation(n)[: int(round(correlation * n))]] = True
    # An offset in [1, num_backgrounds) never maps a label onto itself and
    # is uniform over the other ids.
    offsets = rng.integers(1, num_backgrounds, size=n)
    return np.where(matched, labels, (labels + offsets) % num_backgrounds)


def _hsv_to_rgb(h, s, v):
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array(
        [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i],
        dtype=np.float32,
    )


def render_example(template, photo, image_size, object_rng, background_rng):
    """Renders one digit silhouette in a flat colour on a background crop.

    The object and the background crop are drawn from separate generators so
    that the same object can be rendered on different backgrounds.

    Args:
        template: float array of shape `(h, w)` in `[0, 1]`, a digit.
        photo: uint8 array of shape `(H, W, 3)`, the background source;
            both sides must be at least `image_size`.
        image_size: int, side of the square output image.
        object_rng: `numpy.random.Generator` driving the object's scale,
            position and colour.
        background_rng: `numpy.random.Generator` driving the crop.

    Returns:
        A tuple `(image, object_mask)`: uint8 array of shape
        `(image_size, image_size, 3)` and bool array of shape
        `(image_size, image_size)` that is True exactly on the pixels painted
        with the object colour. Pixels outside the object mask are the
        background crop, unchanged.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> photo = np.zeros((64, 64, 3), np.uint8)
    >>> image, object_mask = render_example(np.eye(8), photo, 32, rng, rng)
    >>> image.shape, object_mask.shape
    ((32, 32, 3), (32, 32))
    """
    sk_transform = _require("skimage.transform", "`render_example`")
    if min(photo.shape[:2]) < image_size:
        raise validation.invalid(
            "`render_example`", "photo", "an image whose sides are >= "
            f"image_size={image_size}",
            received=f"a photo of shape {photo.shape}",
        )
    height, width = photo.shape[:2]
    low = max(image_size, CROP_SCALE_RANGE[0] * min(height, width))
    high = max(low, CROP_SCALE_RANGE[1] * min(height, width))
    crop = int(background_rng.uniform(low, high))
    top = int(background_rng.integers(0, height - crop + 1))
    left = int(background_rng.integers(0, width - crop + 1))
    background = sk_transform.resize(
        photo[top : top + crop, left : left + crop],
        (image_size, image_size),
        order=1,
        anti_aliasing=True,
        preserve_range=True,
    )
    image = np.clip(np.round(background), 0, 255).astype(np.uint8)

    side = int(round(object_rng.uniform(*OBJECT_SCALE_RANGE) * image_size))
    # Bicubic upsampling of the 8x8 template gives smooth strokes; the 0.5
    # threshold turns them into a pixel-exact silhouette.
    shape = sk_transform.resize(
        template, (side, side), order=3, anti_aliasing=False, mode="edge"
    )
    silhouette = shape > 0.5
    y = int(object_rng.integers(0, image_size - side + 1))
    x = int(object_rng.integers(0, image_size - side + 1))
    object_mask = np.zeros((image_size, image_size), dtype=bool)
    object_mask[y : y + side, x : x + side] = silhouette

    colour = _hsv_to_rgb(
        object_rng.uniform(0.0, 1.0),
        object_rng.uniform(0.7, 1.0),
        object_rng.uniform(0.85, 1.0),
    )
    if object_mask.any():
        under = image[object_mask].mean(axis=0) / 255.0
        if np.linalg.norm(colour - under) < MIN_COLOUR_CONTRAST:
            # The complementary hue is far from a background that matches
            # the drawn one; keep whichever of the two contrasts more.
            complement = 1.0 - colour
            complement = complement / max(complement.max(), 1e-6)
            if np.linalg.norm(complement - under) > np.linalg.norm(
                colour - under
            ):
                colour = complement
    image[object_mask] = np.round(colour * 255).astype(np.uint8)
    return image, object_mask
