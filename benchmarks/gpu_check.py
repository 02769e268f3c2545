"""GPU check: EnergyMask in ResNet50 at 224x224 under mixed precision.

Prepared for a session that is lent a GPU; one command, a few minutes:

    python benchmarks/gpu_check.py            # on the GPU machine
    python benchmarks/gpu_check.py --smoke    # tiny setting, runs on CPU

Runs on Keras's TensorFlow backend where TensorFlow is installed and on its
JAX backend where it is not (`KERAS_BACKEND` chooses explicitly). On JAX it
prints the tables of `gpu_check_jax.py`. On TensorFlow it prints four
tables:
1. ResNet50 (weights=None), 224x224, batch 64, `mixed_float16`,
   `jit_compile=True`, SGD: train_on_batch time without EnergyMask, with one
   at the head (7x7x2048) and one after conv4_block6_out (14x14x1024),
   timed side by side (interleaved rounds, medians); `--smoke`:
   mixed_bfloat16 without `jit_compile`, which a CPU runs in seconds.
2. Peak device memory of one training step of each (allocator statistics).
3. The layer's forward+backward cost against the floor (x * m) in float16
   on the layer_cost shapes, whole step under XLA (the GPU default of
   `model.fit`) and plain graph + the layer's XLA kernel.
4. TensorFloat-32 (on by default in TensorFlow for float32 matrix products
   and convolutions on Ampere and later GPUs): the largest change of the
   mask and of the energy of a float32 layer between TF32 on and off. The
   statistics are matrix products, and the coherent formulation's
   neighbour sums and XLA fusion barrier are convolutions: all may round
   to TF32 (~1e-3 relative); not measurable on a CPU.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _tensorflow_installed():
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


if "KERAS_BACKEND" not in os.environ:
    os.environ["KERAS_BACKEND"] = (
        "tensorflow" if _tensorflow_installed() else "jax"
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

from _cases import SMOKE_SHAPES  # noqa: E402
from _timing import interleaved_medians, machine, table  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, 2 rounds: checks the script runs")
    args = parser.parse_args()
    print(machine())
    if keras.backend.backend() == "jax":
        import gpu_check_jax

        gpu_check_jax.run(args.smoke)
    else:
        tensorflow_tables(args.smoke)


def tensorflow_tables(smoke):
    """The four TensorFlow tables (see the module docstring)."""
    import tensorflow as tf

    import keras_ersm
    import keras_ersm.xla

    size, batch, repeats, warmup = (224, 64, 20, 3)
    layer_shapes = None
    policy, jit_compile = "mixed_float16", True
    if smoke:
        size, batch, repeats, warmup = (32, 2, 2, 1)
        layer_shapes = SMOKE_SHAPES
        # On a CPU, XLA-compiling three ResNet50s and emulating float16
        # take minutes; the smoke checks that the script runs (table 3
        # still runs float16 under XLA).
        policy, jit_compile = "mixed_bfloat16", False
    gpus = tf.config.list_physical_devices("GPU")
    device = "GPU:0" if gpus else "CPU:0"
    print("devices:", [d.name for d in tf.config.list_physical_devices()])
    if not gpus:
        print("NOTE: no GPU visible; numbers below are not the GPU check.")
    keras.mixed_precision.set_global_policy(policy)

    import layer_cost
    import train_step

    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(size=(batch, size, size, 3)), "float32")
    labels = tf.constant(rng.integers(0, 10, size=(batch,)))
    models = {p or "none": train_step.resnet50(p, size,
                                               jit_compile=jit_compile)
              for p in (None, "head", "mid")}
    runs = {name: (lambda m=m: m.train_on_batch(images, labels))
            for name, m in models.items()}
    medians = interleaved_medians(runs, repeats, warmup)
    base = medians["none"][0]
    print()
    print(f"1. ResNet50 {size}x{size}, batch {batch}, {policy}, "
          f"jit_compile={jit_compile}; medians of {repeats} rounds")
    print(table(["model", "median ms", "vs none"],
                [[n, f"{1e3 * t:.2f}", f"{t / base - 1:+.1%}"]
                 for n, (t, _) in medians.items()]))

    def peak(function):
        function()
        before = tf.config.experimental.get_memory_info(device)["current"]
        tf.config.experimental.reset_memory_stats(device)
        function()
        return tf.config.experimental.get_memory_info(device)["peak"] - before

    peaks = {n: peak(r) for n, r in runs.items()}
    print()
    print(f"2. Peak {device} memory of one training step")
    print(table(["model", "peak MiB", "extra MiB"],
                [[n, f"{p / 2**20:.1f}", f"{(p - peaks['none']) / 2**20:+.2f}"]
                 for n, p in peaks.items()]))

    rows = []
    shapes = layer_shapes or layer_cost.SHAPES
    for name, (shape, patch_size) in shapes.items():
        x, u, m = layer_cost.step_inputs(shape, "float16")
        cands = {}
        for jit in (False, True):
            floor = layer_cost.floor_step(jit)
            cands[("floor", jit)] = lambda f=floor: f(x, m, u)
            for formulation in ("reference", "coherent"):
                layer = layer_cost.make_energy_mask(formulation, patch_size,
                                                    shape)
                step = layer_cost.layer_step(layer, jit=jit)
                cands[(formulation, jit)] = lambda s=step: s(x, u)
        t = {k: v[0] for k, v in
             interleaved_medians(cands, repeats, warmup).items()}
        rows.append([name] + [
            f"{t[(f, j)] / t[('floor', j)]:.2f}"
            for j in (True, False) for f in ("reference", "coherent")
        ] + [f"{1e3 * t[('floor', True)]:.3f}"])
    print()
    print("3. Layer forward+backward / floor, float16 input")
    print(table(["shape", "ref (whole-step XLA)", "coh (whole-step XLA)",
                 "ref (plain + XLA kernel)", "coh (plain + XLA kernel)",
                 "floor ms (XLA)"], rows))

    keras.mixed_precision.set_global_policy("float32")
    tf.get_logger().setLevel("ERROR")  # retracing per setting is the point
    features = tf.constant(np.maximum(rng.normal(
        size=(2, 4, 4, 32) if smoke else (8, 14, 14, 256)), 0), "float32")
    rows = []
    for formulation in ("reference", "coherent"):
        layer = keras_ersm.EnergyMask.from_preset(
            "authors", formulation=formulation,
            score_kernel_initializer=keras.initializers.RandomNormal(seed=0),
        )
        layer.build(features.shape)
        for jit in (False, True):
            grids = {}
            for tf32 in (True, False):
                tf.config.experimental.enable_tensor_float_32_execution(tf32)
                # Traced and compiled anew under each setting, the layer's
                # own XLA kernels too.
                keras_ersm.xla.compiled.cache_clear()
                grids[tf32] = tf.function(layer.explain,
                                          jit_compile=jit)(features)
            mask_change = float(tf.reduce_max(tf.abs(
                grids[True]["mask"] - grids[False]["mask"])))
            energy_change = float(
                tf.reduce_max(tf.abs(grids[True]["energy"]
                                     - grids[False]["energy"]))
                / tf.reduce_max(tf.abs(grids[False]["energy"])))
            rows.append([formulation, "whole XLA" if jit else "plain",
                         f"{mask_change:.2e}", f"{energy_change:.2e}"])
    tf.config.experimental.enable_tensor_float_32_execution(True)
    print()
    print("4. TF32 on vs off, float32 layer, "
          f"{tuple(features.shape)}: largest change")
    print(table(["formulation", "compiled", "mask (abs)",
                 "energy (rel. to max)"], rows))


if __name__ == "__main__":
    main()
