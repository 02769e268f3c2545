"""The TensorFlow-only edge of the energy kernels: XLA compilation, and a
check of the map's size when it is only known as the graph runs.

On the TensorFlow backend the layer's kernels (`compiled`) are wrapped in
`tf.function(jit_compile=True)`, so each runs as one XLA cluster whether or
not the surrounding model is compiled with `jit_compile`. Inside an outer XLA
function (e.g. `model.fit` with `jit_compile=True`, the default on GPU) the
plain function is called instead, so that it is traced straight into the
outer cluster: a must-compile `tf.function` nested in an XLA-compiled step
under a gradient tape made TensorFlow 2.21 compile the layer's *input* as a
compile-time constant, i.e. constant-fold the whole energy computation at
compile time (10-30 s `slow_operation_alarm`s) and recompile the step for
every new input batch. On other backends the function is returned unchanged
(JAX already compiles whole steps).

`serving_trace()` is the one scope for tracing graphs meant for serving
(`keras_ersm.saved_model.export`): inside it the energy kernels trace as plain
TensorFlow ops, as TensorFlow Serving's GPU images cannot run must-compile
functions (tensorflow/serving#2214), and `EnergyMask` layers leave their
kept-fraction metric alone (a served graph reads variables, never writes
them).
"""

import contextlib
import functools
import re
import threading

import keras

from keras_ersm import compat

_local = threading.local()


@contextlib.contextmanager
def serving_trace(*, differentiate_forward=False):
    """Trace graphs for serving inside this block (this thread only).

    Energy kernels trace as plain TensorFlow ops, not must-compile
    functions, and `EnergyMask` layers do not update their kept-fraction
    metric; the layers themselves are left unchanged. A scope, like Keras's
    own (`StatelessScope`, name scopes), thread-local as Keras's global
    state, and not an argument: `tf.saved_model.save` traces functions
    itself, outside any call of ours, so the save runs inside it too.

    Args:
        differentiate_forward: bool, whether the energy kernels also leave
            out their hand-written gradient, so that TensorFlow
            differentiates their forward ops (the same numbers).
            `keras_ersm.export` does: `tf.saved_model.save` would
            otherwise trace a gradient function for every signature, most
            of an export's time.
    """
    previous = tracing_for_serving(), differentiating_forward()
    _local.serving = True
    _local.differentiate_forward = bool(differentiate_forward)
    try:
        yield
    finally:
        _local.serving, _local.differentiate_forward = previous


def tracing_for_serving():
    """Whether this thread is inside `serving_trace()`."""
    return getattr(_local, "serving", False)


def differentiating_forward():
    """Whether this thread is inside `serving_trace(differentiate_forward=
    True)`: energy kernels then have no hand-written gradient."""
    return getattr(_local, "differentiate_forward", False)


def compiling():
    """Whether energy kernels traced now are XLA-compiled."""
    return (
        keras.backend.backend() == "tensorflow" and not tracing_for_serving()
    )


def slices_are_copied():
    """Whether a slice that feeds a matrix product is written out as a copy.

    TensorFlow's own kernels slice a tensor along its leading axis in place
    (the slice shares the tensor's buffer); XLA (code traced inside an
    XLA-compiled TensorFlow function, or on JAX) copies a sliced operand of
    a dot into a new buffer. Other backends slice into views.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return compat.inside_xla_context()
    return backend == "jax"


@functools.cache
def compiled(function, **static_arguments):
    """`function` with `static_arguments` bound, run XLA-compiled.

    Args:
        function: a function of tensors or nests of tensors (and of the
            keyword arguments bound here), returning a nest of tensors.
        **static_arguments: hashable keyword arguments fixed at trace time.

    Returns:
        A function of the remaining (tensor) arguments. On the TensorFlow
        backend it dispatches to a `tf.function(..., jit_compile=True)`
        unless called under `serving_trace()` or traced inside an
        XLA-compiled function (then it is traced inline); elsewhere it is
        the bound function itself. Cached, so that every layer with the
        same static arguments (e.g. the same hyperparameters) shares one
        compiled function and its traces.
    """
    bound = functools.partial(function, **static_arguments)
    if keras.backend.backend() != "tensorflow":
        return bound

    import tensorflow as tf

    def run(*tensors):
        return bound(*tensors)

    # One tf.function per tuple of argument ranks: `reduce_retracing`
    # relaxes a shape that differs between calls, and a rank that differs
    # (a scalar score bias, then a per-position one, under the same static
    # arguments) would become an unknown rank the energy cannot trace.
    jitted_by_ranks = {}

    def jitted(*tensors):
        ranks = tuple(tensor.shape.rank for tensor in tf.nest.flatten(tensors))
        if ranks not in jitted_by_ranks:
            # Wrapping hides the bound keywords from tf.function, whose
            # signature binding would otherwise demand them.
            jitted_by_ranks[ranks] = tf.function(
                run, jit_compile=True, reduce_retracing=True, autograph=False
            )
        return jitted_by_ranks[ranks](*tensors)

    def dispatch(*args):
        if compiling() and not compat.inside_xla_context():
            # Keras variables are read into tensors: tf.function cannot take
            # them as arguments.
            return jitted(*tf.nest.map_structure(tf.convert_to_tensor, args))
        return bound(*args)

    # AutoGraph (on in `tf.function` by default) cannot convert a wrapped
    # partial and would warn on every trace; there is nothing to convert.
    return tf.autograph.experimental.do_not_convert(dispatch)


def fusion_barrier(*grids):
    """The token grids (B, h, w) themselves, materialised under XLA.

    XLA's CPU fusion duplicates cheap elementwise producers into every
    consumer. A token-grid tensor broadcast over the C-wide map (the mask,
    the per-token gradients) was recomputed, with the chain of grid code
    behind it (~280 ops per element for the gradient of the unrolled
    mean-field sweeps), for every one of the C * p * p values of a token.
    `opt-barrier`s are expanded before fusion on CPU, and `max(g, g)` or a
    1x1 convolution by 1 are simplified away; XLA does not fuse
    convolutions into their consumers and does not see through this one:
    out[j] = 1 * g[j] + 0 * g[j + 1] on the zero-padded grids stacked as
    channels (exact for finite values; a non-finite gradient also makes the
    token to its left NaN, non-finite either way). Outside XLA (and on other
    backends) the grids are returned unchanged.

    Returns:
        A list of the grids.
    """
    if (keras.backend.backend() != "tensorflow"
            or not compat.inside_xla_context()):
        return list(grids)
    import tensorflow as tf

    count = len(grids)
    dtype = grids[0].dtype
    stacked = tf.pad(tf.stack(grids, axis=-1), [[0, 0], [0, 0], [0, 1], [0, 0]])
    kernel = tf.stack([tf.eye(count, dtype=dtype), tf.zeros((count, count), dtype)])
    outputs = tf.nn.conv2d(stacked, kernel[None], 1, "VALID")
    return tf.unstack(outputs, axis=-1)


def checked_divisible(x, divisor, message, name):
    """`x` (B, H, W, C), checked as the graph runs: `divisor` divides H and W.

    For TensorFlow graphs traced with an unknown height or width (a model
    on `keras.Input((None, None, C))` exported, or `predict` after it
    relaxed its shapes), where the layer's build-time check cannot see the
    size. The check fails with `message` and the shape. XLA drops such
    checks (and compiles for known sizes): there `x` goes through a reshape
    to (B, H - H % divisor, W - W % divisor, C), the identity when the
    divisor divides H and W, and otherwise an error naming the reshape
    node `name` (other characters than letters, digits and `_.-/`, which
    TensorFlow refuses in node names, become `_`). Elsewhere `x`
    unchanged.
    """
    if keras.backend.backend() != "tensorflow":
        return x
    import tensorflow as tf

    shape = tf.shape(x)
    if compat.inside_xla_context():
        cut = shape[1:3] - tf.math.floormod(shape[1:3], divisor)
        return tf.reshape(
            x, tf.concat([shape[:1], cut, shape[3:]], axis=0),
            name=re.sub(r"[^A-Za-z0-9_.\-/]", "_", name),
        )
    divides = tf.reduce_all(tf.equal(tf.math.floormod(shape[1:3], divisor), 0))
    # The message, then the shape.
    check = tf.debugging.Assert(divides, [message, shape], summarize=4)
    with tf.control_dependencies([check]):
        return tf.identity(x)
