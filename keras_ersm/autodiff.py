"""Vector-Jacobian products, at the edge between Keras and each backend.

`keras_ersm.energy_kernel.apply_energy_mask` differentiates the C-wide part
of the layer by hand and leaves only the token-grid math to the backend's
automatic differentiation, through `vjp`: Keras has no backend-agnostic VJP.
"""

import keras

BACKENDS = ("tensorflow", "jax")


def vjp(function, *primals):
    """Evaluate `function` at `primals` with its vector-Jacobian product.

    Args:
        function: a function of tensors (or nests of tensors, such as a
            `NamedTuple`) returning a tuple of tensors.
        *primals: its arguments.

    Returns:
        `(outputs, pullback)`: `function(*primals)` and a function that maps
        one cotangent per output to one gradient per primal, nested as
        the primal (zeros for primals the outputs do not depend on).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(primals)
            outputs = function(*primals)

        def pullback(*cotangents):
            return tape.gradient(
                list(outputs),
                list(primals),
                output_gradients=list(cotangents),
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )

        return outputs, pullback
    if backend == "jax":
        import jax

        outputs, jax_pullback = jax.vjp(function, *primals)
        return outputs, lambda *cotangents: jax_pullback(tuple(cotangents))
    raise NotImplementedError(
        f"keras_ersm.autodiff.vjp supports the backends {BACKENDS}; "
        f"received {backend!r}."
    )
