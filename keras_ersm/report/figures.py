"""The report's PNG figures (matplotlib, no display needed)."""

import os

import numpy as np

ORDER_STYLES = {
    "learned": ("ERSM learned ranking", "tab:red"),
    "magnitude": ("feature magnitude", "tab:blue"),
    "random": ("random", "tab:gray"),
    "gradcam": ("Grad-CAM (baseline)", "tab:green"),
}


def _pyplot():
    import matplotlib

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
    """Histogram of mask values and of the per-image kept fraction."""
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


def _upsample(grid, size):
    repeat = size // grid.shape[0], size // grid.shape[1]
    return np.kron(grid, np.ones(repeat))


def masks_figure(examples, path):
    """Per example: image, object mask, ERSM mask and baseline Grad-CAM."""
    plt = _pyplot()
    images = examples["images"]
    columns = [("image", None)]
    if examples["object_masks"] is not None:
        columns.append(("object mask", "object_masks"))
    columns += [("ERSM mask", "ersm_mask"), ("Grad-CAM (baseline)", "gradcam")]
    figure, axes = plt.subplots(
        len(images), len(columns),
        figsize=(2.2 * len(columns), 2.2 * len(images)), squeeze=False,
    )
    size = images.shape[1]
    for row, image in enumerate(images):
        shown = _displayable(image)
        for column, (title, key) in enumerate(columns):
            axis = axes[row, column]
            axis.imshow(shown)
            if key is not None:
                overlay = np.asarray(examples[key][row], np.float32)
                overlay = np.squeeze(overlay)
                if overlay.shape[0] != size:
                    overlay = _upsample(overlay, size)
                axis.imshow(overlay, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if row == 0:
                axis.set_title(title, fontsize=9)
            axis.axis("off")
        axes[row, 0].text(
            1, 6, f"label {examples['labels'][row]}", color="white",
            fontsize=8, backgroundcolor="black",
        )
    return _save(figure, path)
