"""Training-step overhead of EnergyMask in ResNet50, and its extra peak memory.

Part 1, step time: ResNet50 (weights=None, include_top=False), 64x64 inputs,
batch 32, global average pooling and a 10-way softmax head, compiled with
`jit_compile=False` (the backbone is not XLA-compiled; EnergyMask still runs
its own XLA kernel, the default), SGD. Three models, timed side by side with
`train_on_batch` (interleaved rounds, medians):

* `none`: no EnergyMask;
* `head`: EnergyMask on the backbone's last feature map (2x2x2048 here);
* `mid`: EnergyMask after `conv4_block6_out` (4x4x1024 here).

Part 2, peak memory, from TensorFlow's allocator statistics
(`tf.config.experimental.get_memory_info("CPU:0")`, which includes XLA's
buffers on this build), minus the memory held before the step: (a) one
ResNet50 training step at `--memory-size` (224 by default, where the masked
maps are 12-25 MiB, well above the allocator's noise; at 64x64 they are 1-2
MiB) without a mask, with EnergyMask at the head or mid placement, and with
the floor as a layer (`x * sigmoid(b)`) at the same places, medians of
`--memory-repeats`; (b) one forward+backward of the layer alone against the
floor (x * m) on the layer_cost shapes, in the default configuration, with
maps of `--layer-dtype` (float32, or bfloat16 / float16 with the layer
under the matching mixed-precision policy), next to Keras's
LayerNormalization (float32 statistics of the map, like EnergyMask's),
each step alone in fresh processes.
"extra" is relative to the size of the masked map. Under whole-step XLA
the memory a step needs is fixed when it compiles: xla_memory.py reads it
from XLA's buffer assignment, exactly.

    python benchmarks/train_step.py [--repeats 20] [--skip-time]
        [--skip-memory] [--memory-size 224] [--memory-repeats 3]
        [--layer-dtype float32] [--skip-resnet-memory]
"""

import argparse
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import layer_cost  # noqa: E402
from _cases import MASK_CANDIDATES  # noqa: E402
from _cases import resnet50  # noqa: E402
from keras_ersm import EnergyMask  # noqa: E402
from _timing import interleaved_medians, machine, table  # noqa: E402

class StaticMask(keras.layers.Layer):
    """The floor as a layer: `x * sigmoid(b)`, `b` a trainable (H, W, 1) grid.

    The cheapest trainable spatial mask (it reads nothing of `x` to decide):
    what any masking layer at the same place costs at least.
    """

    def build(self, input_shape):
        self.logits = self.add_weight(
            shape=(input_shape[1], input_shape[2], 1), initializer="zeros"
        )

    def call(self, inputs):
        return inputs * keras.ops.sigmoid(self.logits)


def memory_now():
    return tf.config.experimental.get_memory_info("CPU:0")["current"]


def peak_of(function, warm_up=True):
    """Peak bytes allocated while `function` runs, above what was held."""
    if warm_up:
        function()  # tracing, compilation
    before = memory_now()
    tf.config.experimental.reset_memory_stats("CPU:0")
    function()
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


def median_peak(function, repeats):
    """Median of `peak_of` over `repeats` runs (after one warm-up run)."""
    function()
    return float(np.median(
        [peak_of(function, warm_up=False) for _ in range(repeats)]
    ))


def masked_map_bytes(size, batch):
    """Bytes of the float32 map each placement masks, at `size` x `size`."""
    return {"head": batch * (size // 32) ** 2 * 2048 * 4,
            "mid": batch * (size // 16) ** 2 * 1024 * 4}


def resnet_memory(args):
    """Peak memory of ResNet50 training steps with and without masks."""
    size = args.memory_size
    models = {p or "none": resnet50(p, size) for p in (None, "head", "mid")}
    for placement in ("head", "mid"):
        models[f"{placement}, x * sigmoid(b)"] = resnet50(
            placement, size, mask_factory=lambda: StaticMask(name="floor")
        )
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(args.batch, size, size, 3)), tf.float32)
    y = tf.constant(rng.integers(0, 10, size=(args.batch,)))
    peaks = {name: [] for name in models}
    for model in models.values():
        model.train_on_batch(x, y)
    for _ in range(args.memory_repeats):
        for name, model in models.items():
            peaks[name].append(peak_of(
                lambda model=model: model.train_on_batch(x, y), warm_up=False
            ))
    peak = {name: float(np.median(values)) for name, values in peaks.items()}
    maps = masked_map_bytes(size, args.batch)
    rows = []
    for name in models:
        placement = name.split(",")[0]
        extra = peak[name] - peak["none"]
        spread = (max(peaks[name]) - min(peaks[name])) / 2**20
        rows.append([
            name, f"{peak[name] / 2**20:.1f}", f"{spread:.1f}",
            f"{extra / 2**20:+.1f}",
            "" if placement == "none" else f"{extra / maps[placement]:+.1%}",
        ])
    print()
    print(f"Peak memory of one ResNet50 training step, {size}x{size}, batch "
          f"{args.batch} (allocator statistics, median of "
          f"{args.memory_repeats}); x * sigmoid(b) is the floor as a layer")
    print(table(["model", "peak MiB", "max - min MiB", "extra MiB vs none",
                 "extra / masked map"], rows))


LAYER_CANDIDATES = ("floor", "reference", "coherent", "layer_normalization")


def layer_step_peak(name, candidate, dtype):
    """Child: median of 3 peaks of one layer-alone step, in this process."""
    import peers

    layer_cost.use_map_dtype(dtype)
    shape, patch_size = layer_cost.SHAPES[name]
    x, u, m = layer_cost.step_inputs(shape, dtype)
    if candidate == "floor":
        floor = layer_cost.floor_step(jit=False)
        return median_peak(lambda: floor(x, m, u), 3)
    if candidate == "layer_normalization":
        # Keras's own float32-statistics layer under the same policy.
        layer = keras.layers.LayerNormalization()
        layer.build(shape)
        step = peers.peer_step(layer, jit=False)
    else:
        layer = layer_cost.make_energy_mask(candidate, patch_size, shape)
        step = layer_cost.layer_step(layer, jit=False)
    return median_peak(lambda: step(x, u), 3)


def layer_memory(rows, dtype, repeats):
    """Layer alone vs the floor, maps of `dtype` (layers under the matching
    mixed-precision policy).

    Every step is measured alone in `repeats` fresh processes (median):
    within one process the peaks of later steps depend on the allocator's
    history (TensorFlow's CPU allocator hands out chunks of up to twice the
    size asked for), which moved the floor's peak at 14x14x2048 p2 from 128
    to 98 MiB and a layer's by a whole map.
    """
    for name, (shape, _) in layer_cost.SHAPES.items():
        size = layer_cost.map_bytes(shape, dtype)
        peaks = {}
        for candidate in LAYER_CANDIDATES:
            children = [
                subprocess.run(
                    [sys.executable, os.path.abspath(__file__),
                     "--layer-step-child", name, candidate, dtype],
                    capture_output=True, text=True, check=True,
                ).stdout.split()[-1]
                for _ in range(repeats)
            ]
            peaks[candidate] = float(np.median([float(c) for c in children]))
        row = [name, f"{size / 2**20:.1f}", f"{peaks['floor'] / 2**20:.1f}"]
        for candidate in LAYER_CANDIDATES[1:]:
            row.append(f"{(peaks[candidate] - peaks['floor']) / size:+.1%}")
        rows.append(row)
        print(row, flush=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--layer-step-child":
        print(layer_step_peak(*sys.argv[2:]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-size", type=int, default=224,
                        help="input size of the ResNet50 memory comparison")
    parser.add_argument("--memory-repeats", type=int, default=3)
    parser.add_argument("--layer-dtype", default="float32",
                        choices=layer_cost.MAP_DTYPES,
                        help="dtype of the maps of the layer-alone memory "
                             "comparison")
    parser.add_argument("--skip-resnet-memory", action="store_true")
    args = parser.parse_args()
    print(machine())
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(args.batch, args.size, args.size, 3)).astype(
        "float32")
    labels = rng.integers(0, 10, size=(args.batch,))
    models = {p or "none": resnet50(p, args.size) for p in (None, "head", "mid")}
    for placement in ("head", "mid"):
        # The configuration whose mask learns (the default of `ersm train`).
        models[f"{placement}, learned"] = resnet50(
            placement, args.size, mask_factory=lambda: EnergyMask(
                name="energy_mask", **MASK_CANDIDATES["learned"]),
        )
    if not args.skip_time:
        runs = {
            name: (lambda model=model: model.train_on_batch(images, labels))
            for name, model in models.items()
        }
        medians = interleaved_medians(runs, args.repeats, args.warmup)
        base = medians["none"][0]
        rows = []
        for name in models:
            t, times = medians[name]
            rows.append([name, f"{1e3 * t:.1f}",
                         f"{t / base - 1:+.1%}",
                         f"{1e3 * min(times):.1f}"])
        print()
        print(f"ResNet50 {args.size}x{args.size}, batch {args.batch}, "
              f"train_on_batch, jit_compile=False; medians of "
              f"{args.repeats} interleaved rounds")
        print(table(["model", "median ms", "vs none", "min ms"], rows))
    if not args.skip_memory:
        del models
        if not args.skip_resnet_memory:
            resnet_memory(args)
        rows = []
        layer_memory(rows, args.layer_dtype, args.memory_repeats)
        print()
        print(f"Layer alone, forward+backward, {args.layer_dtype} maps, "
              "default configuration (plain graph with the layer's XLA "
              "kernels): extra peak over the floor (x * m), relative to the "
              f"feature map size; medians of {args.memory_repeats} fresh "
              "processes")
        print(table(["shape", "map MiB", "floor peak MiB", "reference",
                     "coherent", "keras LayerNormalization"], rows))


if __name__ == "__main__":
    main()
