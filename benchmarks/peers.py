"""The layers a user would otherwise put where EnergyMask goes.

Benchmark-only implementations, channels-last, training mode:

* `CBAMSpatialAttention`: the spatial half of CBAM (Woo et al., 2018):
  channel-wise mean and max -> 7x7 conv -> sigmoid -> multiply.
* `ConvGate`: `x * sigmoid(conv1x1(x))`, for the memory tables only.
* `DropBlock` (Ghiasi et al., 2018), block_size 7, keep_prob 0.9, with the
  seed mask drawn per channel (as the TensorFlow TPU ResNet reference) or
  shared by all channels (`shared=True`, the cheapest variant).
"""

import keras
import tensorflow as tf
from keras import ops


class CBAMSpatialAttention(keras.layers.Layer):
    def __init__(self, kernel_size=7, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(
            1, kernel_size, padding="same", activation="sigmoid"
        )

    def build(self, input_shape):
        self.conv.build(tuple(input_shape[:3]) + (2,))

    def call(self, x):
        pooled = ops.concatenate(
            [ops.mean(x, axis=-1, keepdims=True),
             ops.max(x, axis=-1, keepdims=True)],
            axis=-1,
        )
        return x * self.conv(pooled)


class ConvGate(keras.layers.Layer):
    """The simplest learned spatial gate: `x * sigmoid(conv1x1(x))`.

    Not a peer in the timing tables (nobody publishes it as a method); in
    the memory tables it shows what reading the map with a learned C-wide
    projection costs, which EnergyMask's score also is.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(1, 1, activation="sigmoid")

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, x):
        return x * self.conv(x)


class DropBlock(keras.layers.Layer):
    def __init__(self, block_size=7, keep_prob=0.9, shared=False, **kwargs):
        super().__init__(**kwargs)
        self.block_size = block_size
        self.keep_prob = keep_prob
        self.shared = shared

    def call(self, x, training=None):
        if not training:
            return x
        shape = ops.shape(x)
        height, width = shape[1], shape[2]
        block = min(self.block_size, x.shape[1], x.shape[2])
        area = ops.cast(height * width, "float32")
        valid = ops.cast((height - block + 1) * (width - block + 1), "float32")
        gamma = (1.0 - self.keep_prob) * area / (block ** 2) / valid
        channels = 1 if self.shared else shape[3]
        noise = tf.random.uniform((shape[0], height, width, channels))
        seeds = ops.cast(noise < gamma, x.dtype)
        dropped = ops.max_pool(seeds, block, strides=1, padding="same")
        keep = 1.0 - dropped
        scale = ops.cast(ops.size(keep), x.dtype) / (ops.sum(keep) + 1e-6)
        return x * keep * scale


PEERS = {
    "cbam_spatial": lambda: CBAMSpatialAttention(),
    "dropblock": lambda: DropBlock(),
    "dropblock_shared": lambda: DropBlock(shared=True),
}


def peer_step(layer, jit):
    @tf.function(jit_compile=jit)
    def step(x, u):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        return tape.gradient(y, [x] + layer.trainable_weights,
                             output_gradients=u)

    return step
