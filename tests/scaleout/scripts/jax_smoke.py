"""EnergyMask under `KERAS_BACKEND=jax`: call, gradients, `fit`, `evaluate`,
`mask_model`, `.keras` saving; meant to run where TensorFlow cannot be
imported (tests/without_tensorflow on PYTHONPATH).

Usage: KERAS_BACKEND=jax python jax_smoke.py OUT.npz

Saves the backend name, whether TensorFlow was importable, the layer's output
and energy loss for a fixed input (checked against TensorFlow by the caller),
the fit losses, the logged kept fractions with the fractions of the masks
they stand for, `mask_model`'s masks and the predictions of the model before
and after a `.keras` round trip.
"""

import os
import sys
import tempfile

import keras
import numpy as np
import tiny

from keras_ersm import EnergyMask
from keras_ersm import energy_kernel
from keras_ersm.mask_options import MaskOptions
from keras_ersm import mask_model

# energy_kernel.apply_energy_mask's hand-written gradient
# (keras_ersm.autodiff.vjp on JAX) is checked against TensorFlow's on these
# inputs by the caller.
GRADIENT_CASE = dict(
    patch_size=2, formulation="reference", unary_weight=0.5,
    pairwise_weight=0.7, temperature=0.9,
)


def smoke_layer():
    """The layer whose outputs the caller recomputes on TensorFlow."""
    return EnergyMask(
        patch_size=2,
        formulation="coherent",
        neighbour_weights="affinity",
        unary_weight=0.5,
        score_kernel_initializer=keras.initializers.Constant(0.3),
        score_bias_initializer=keras.initializers.Constant(-0.2),
    )


def gradient_inputs():
    # 10x8 pixels: more than energy_kernel.MAX_IMAGE_GRAM_PIXELS, so the
    # rows are paired with their shifted copy (JAX copies slices); the smoke
    # layer's small maps take the per-image Gram matrix.
    rng = np.random.default_rng(5)
    x = np.maximum(rng.normal(size=(2, 10, 8, 3)), 0.0).astype("float32")
    kernel = rng.normal(size=(2, 2, 3)).astype("float32")
    bias = rng.normal(size=(5, 4)).astype("float32")
    u = rng.normal(size=x.shape).astype("float32")
    v = rng.normal(size=(2, 5, 4)).astype("float32")
    return x, kernel, bias, u, v


def gradient_objective(x, kernel, bias, u, v):
    outputs, grids, loss = energy_kernel.apply_energy_mask(
        x, kernel, bias,
        MaskOptions(
            **GRADIENT_CASE,
        ),
    )
    return (
        keras.ops.sum(outputs * u) + 3.0 * loss
        + keras.ops.sum(grids["mask"] * v)
    )


def jax_gradients():
    import jax

    x, kernel, bias, u, v = gradient_inputs()
    gradients = jax.grad(
        lambda x, kernel, bias: gradient_objective(x, kernel, bias, u, v),
        argnums=(0, 1, 2),
    )(x, kernel, bias)
    return [np.asarray(g) for g in gradients]


def tensorflow_importable():
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def main(path):
    images, labels = tiny.data(16)
    features = np.maximum(images - 0.5, 0.0)
    layer = smoke_layer()
    outputs = layer(features)
    energy_loss = layer.losses[0]
    eager_kept_fraction = layer.kept_fraction.result()

    model = tiny.build_model()
    tiny.compile_for_classification(model)
    history = model.fit(
        images, labels, batch_size=8, epochs=2, shuffle=False, verbose=0
    )
    evaluation = model.evaluate(
        images, labels, batch_size=8, verbose=0, return_dict=True
    )
    # The kept fraction fit and evaluate log is that of the masks: with the
    # weights fixed (learning rate 0), every epoch's; after training,
    # evaluate's. Batches of 6, 6 and 4: a mean of per-batch fractions
    # would weigh the last batch's tokens more.
    frozen = tiny.build_model()
    tiny.compile_for_classification(frozen, learning_rate=0.0)
    frozen_history = frozen.fit(
        images, labels, batch_size=6, epochs=2, shuffle=False, verbose=0
    )
    masks = tiny.masks(model, images)
    with tempfile.TemporaryDirectory() as folder:
        saved = os.path.join(folder, "model.keras")
        model.save(saved)
        loaded = keras.models.load_model(saved)
    grad_x, grad_kernel, grad_bias = jax_gradients()
    np.savez(
        path,
        backend=keras.backend.backend(),
        tensorflow_importable=tensorflow_importable(),
        grad_x=grad_x,
        grad_kernel=grad_kernel,
        grad_bias=grad_bias,
        features=features,
        outputs=np.asarray(outputs),
        energy_loss=np.asarray(energy_loss),
        eager_kept_fraction=np.asarray(eager_kept_fraction),
        loss=np.asarray(history.history["loss"]),
        kept_fraction=np.asarray(history.history["mask_kept_fraction"]),
        evaluate_loss=evaluation["loss"],
        evaluate_kept_fraction=evaluation["mask_kept_fraction"],
        masks=masks,
        frozen_kept_fraction=np.asarray(
            frozen_history.history["mask_kept_fraction"]
        ),
        frozen_masks=tiny.masks(frozen, images),
        mask_model_masks=mask_model(model).predict(images, verbose=0)["mask"],
        predictions=model.predict(images, verbose=0),
        loaded_predictions=loaded.predict(images, verbose=0),
        loaded_mask_config=str(loaded.get_layer("mask").get_config()),
        mask_config=str(model.get_layer("mask").get_config()),
    )


if __name__ == "__main__":
    main(sys.argv[1])
