"""The report's PNG figures (matplotlib, no display needed)."""

import os

import numpy as np

ORDER_STYLES = {
    "learned": ("ERSM learned ranking", "tab:red"),
    "magnitude": ("feature magnitude", "tab:blue"),
    "random": ("random", "tab:gray"),
    "gradcam": ("Grad-CAM (baseline)", "tab:green"),
}


INSTALL_HINT = 'pip install "keras-ersm[demo]"'


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            f"The report's figures need matplotlib ({error}). Install the "
            f"optional dependencies with: {INSTALL_HINT}"
        ) from error

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path):
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
    return os.path.basename(path)


def deletion_figure(deletion, path):
    """Both deletion directions, one panel each, every ranking a curve."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    titles = {
        "least_important_first": "least important first (higher = better)",
        "most_important_first": "most important first (lower = better)",
    }
    for axis, (direction, title) in zip(axes, titles.items()):
        result = deletion[direction]
        for order, curve in result["curves"].items():
            label, colour = ORDER_STYLES[order]
            axis.plot(
                curve["fractions"], curve["accuracy"], color=colour,
                label=f"{label} (area {curve['area']:.3f})",
            )
        axis.set_title(title)
        axis.set_xlabel("fraction of tokens deleted")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(
        f"accuracy ({result['split']}, n={result['num_images']}, "
        f"seed={result['seed']})"
    )
    return _save(figure, path)


def occlusion_figure(occlusion, path):
    """Accuracy against the image fraction covered by a grey square."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 4))
    for name, colour in (("baseline", "tab:blue"), ("ersm", "tab:red")):
        result = occlusion[name]
        axis.plot(
            [0.0] + list(result["fractions"]),
            [result["clean_accuracy"]] + list(result["accuracy"]),
            marker="o", color=colour, label=name,
        )
    axis.set_xlabel("image fraction occluded")
    axis.set_ylabel(
        f"accuracy ({result['split']}, n={result['num_images']}, "
        f"seed={result['seed']})"
    )
    axis.legend()
    axis.grid(alpha=0.3)
    return _save(figure, path)


def histogram_figure(sparsity, path):
    """Histogram of token mask values and of the per-image kept fraction."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    counts = np.asarray(sparsity["histogram"]["counts"])
    edges = np.asarray(sparsity["histogram"]["edges"])
    axes[0].bar(edges[:-1], counts, width=np.diff(edges), align="edge")
    axes[0].set_xlabel("mask value per token")
    axes[0].set_ylabel("tokens")
    axes[1].hist(sparsity["kept_fraction_per_image"], bins=20, range=(0, 1))
    axes[1].set_xlabel("fraction of tokens kept (> 0.5) per image")
    axes[1].set_ylabel("images")
    figure.suptitle(
        f"{sparsity['split']}, n={sparsity['num_images']}, "
        f"seed={sparsity['seed']}"
    )
    return _save(figure, path)


def _displayable(image):
    image = np.asarray(image, np.float32)
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else image * 0


def _unpreprocessed(images, backbone):
    """RGB in [0, 1] of the images `get_preprocessing(backbone)` made.

    Every `keras.applications` preprocessing is affine in the pixel values,
    with at most a channel reversal (caffe: RGB -> BGR minus the mean), so
    probing it with black and pure red, green and blue pixels gives the
    exact inverse without copying each module's constants.
    """
    from keras_ersm.preprocessing import get_preprocessing

    probes = np.concatenate([np.zeros((1, 3)), 255 * np.eye(3)])
    outputs = np.asarray(
        get_preprocessing(backbone)(probes[None, None].astype(np.float32)),
        np.float64,
    ).reshape(4, 3)
    # output = linear.T @ rgb + offset; row c of `linear` is the output
    # per unit of input channel c.
    offset, linear = outputs[0], (outputs[1:] - outputs[0]) / 255
    pixels = np.asarray(images, np.float64) - offset
    rgb = np.linalg.solve(linear.T, pixels.reshape(-1, 3).T).T / 255
    return np.clip(rgb.reshape(pixels.shape), 0, 1).astype(np.float32)


def masks_figure(examples, path, backbone=None):
    """Per example: image, object mask, ERSM mask and baseline Grad-CAM.

    Args:
        examples: the dict from `keras_ersm.experiment.example_maps`.
        path: the PNG to write.
        backbone: the backbone name whose preprocessing made
            `examples["images"]`, so they are shown in their true RGB
            colours; `None` when unknown: each image is then stretched to
            [0, 1] as it is (caffe inputs would show as BGR).
    """
    plt = _pyplot()
    images = examples["images"]
    shown = (
        [_displayable(image) for image in images] if backbone is None
        else _unpreprocessed(images, backbone)
    )
    columns = [("image", None)]
    if examples["object_masks"] is not None:
        columns.append(("object mask", "object_masks"))
    columns += [("ERSM mask", "ersm_mask"), ("Grad-CAM (baseline)", "gradcam")]
    figure, axes = plt.subplots(
        len(images), len(columns),
        figsize=(2.2 * len(columns), 2.2 * len(images)), squeeze=False,
    )
    height, width = images.shape[1:3]
    # Image and overlays share one extent, so a token grid of any shape
    # (one that does not divide the image, or a non-square image) is
    # stretched over exactly the image.
    extent = (0, width, height, 0)
    for row in range(len(images)):
        for column, (title, key) in enumerate(columns):
            axis = axes[row, column]
            axis.imshow(shown[row], extent=extent)
            if key is not None:
                overlay = np.asarray(examples[key][row], np.float32)
                # (h, w) grids and (H, W, 1) object masks; a 1 x 1 grid
                # must stay 2-D.
                overlay = overlay.reshape(overlay.shape[:2])
                axis.imshow(
                    overlay, cmap="jet", alpha=0.5, vmin=0, vmax=1,
                    extent=extent,
                )
            if row == 0:
                axis.set_title(title, fontsize=9)
            axis.axis("off")
        axes[row, 0].text(
            1, 6, f"label {examples['labels'][row]}", color="white",
            fontsize=8, backgroundcolor="black",
        )
    return _save(figure, path)
