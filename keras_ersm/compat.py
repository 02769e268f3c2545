"""The package's only reaches into Keras and TensorFlow internals.

Every use of `keras.src`, of `tensorflow.python` or of a private attribute
of a Keras object goes through a function here, commented with the public
API that is missing, so that an upgrade that moves one breaks this module
alone.
"""

import keras
# Missing: a public function deriving a layer's default name from its class.
from keras.src.utils.naming import to_snake_case
# Missing: a public way to read the active StatelessScope (`keras.
# StatelessScope` only opens one).
from keras.src.backend.common.stateless_scope import get_stateless_scope
# Missing: a public key of a layer call within a functional graph.
from keras.src.ops.function import make_node_key


def default_name_prefix(layer):
    """The prefix of the names Keras generates for `layer`'s class
    ("re_lu" for `ReLU`, numbered "re_lu_1", "re_lu_2", ... per process)."""
    return to_snake_case(type(layer).__name__)


def current_stateless_scope():
    """The innermost active `keras.StatelessScope`, or `None`."""
    return get_stateless_scope()


def is_functional(model):
    """Whether `model` runs a graph of layer calls (a functional model or
    a built Sequential one), not a subclassed `call`."""
    # Missing: a public test for "functional"; `keras.Model` has subclasses
    # of each kind, and only functional ones run through a graph.
    return isinstance(model, keras.Model) and hasattr(
        model, "_run_through_graph"
    )


def layer_calls(layer):
    """Every call (node) of `layer`, in every model that records it."""
    # Missing: public access to a layer's calls; `layer.input` is the first.
    return layer._inbound_nodes


def calls_in(model, layer):
    """The calls (nodes) of `layer` that belong to `model`'s graph.

    A layer's calls also include those in every other model: each
    `keras.Model(tensor, outputs)` cut out of a model records the layers
    after `tensor` once more (the evaluation's feature/head splits), so
    their count alone does not say how often `model` calls it.
    """
    # Missing: the graph of a model's calls; a built Sequential model
    # keeps it in a private functional model.
    graph = getattr(model, "_functional", None) or model
    return [
        node for index, node in enumerate(layer_calls(layer))
        if make_node_key(layer, index) in graph._nodes
    ]


def producing_layer(tensor):
    """The layer (or operation) whose call produced the `KerasTensor`
    `tensor`; for a model input, its `InputLayer`."""
    # Missing: a public link from a symbolic tensor to its operation.
    return tensor._keras_history.operation


def inside_xla_context():
    """Whether TensorFlow is tracing inside a function that XLA compiles
    (`jit_compile=True`, or a parent of it), where a nested XLA function
    would be compiled anyway."""
    import tensorflow as tf
    # Missing: a public TensorFlow query for the XLA context of the graph
    # being traced; `tensorflow.python` is TensorFlow's private module.
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()
    )
