"""Where whole-step XLA loses time on CPU: the forward statistics' matrix products.

EnergyMask reads the C-wide map through batched Gram matrices of pixel rows
(`keras_ersm.energy_kernel._token_statistics_forward`). In the default
configuration they run as TensorFlow ops (oneDNN's batched matrix product,
all cores); inside an XLA-compiled step XLA's CPU code runs them. Timed side
by side (forward only, interleaved rounds, medians), per shape:

* the whole forward statistics, traced as a plain graph (the default
  configuration's TensorFlow ops and compiled kernels) and inside one
  XLA-compiled function (whole-step XLA);
* one of its Gram matrices (`rows @ rows^T` over blocks of K pixels of a
  row, or over whole images of at most 64 pixels), as a TensorFlow op and
  XLA-compiled;
* the floor, `x * m` forward+backward, as in layer_cost.py;
* the whole layer (reference formulation) XLA-compiled, its forward pass
  (output and loss) alone and forward+backward as in layer_cost.py: how
  much of its step the statistics take.

    python benchmarks/statistics_cost.py [--repeats 20] [--shapes ...]
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf  # noqa: E402

import layer_cost  # noqa: E402
from _timing import interleaved_medians, machine, table  # noqa: E402
from keras_ersm import energy_kernel  # noqa: E402


def candidates_for(shape, patch_size):
    x, u, m = layer_cost.step_inputs(shape)
    kernel = tf.random.stateless_normal(
        (patch_size, patch_size, shape[3]), seed=(0, 0)
    )
    # The pixels of one Gram matrix: whole images for small maps, else
    # blocks of a row.
    if energy_kernel._is_small(shape[1], shape[2]):
        block = shape[1] * shape[2]
    else:
        block = energy_kernel._block_width(shape[2], patch_size)

    def statistics(x):
        return energy_kernel._token_statistics_forward(
            x, kernel, patch_size, True
        )

    def gram(x):
        rows = tf.reshape(x, (-1, block, shape[3]))
        return tf.einsum("rwc,rvc->rwv", rows, rows)

    floor = layer_cost.floor_step(jit=False)
    runs = {"floor": lambda: floor(x, m, u)}
    layer = layer_cost.make_energy_mask("reference", patch_size, shape)
    # With the loss: the masking alone reads only the squared norms and
    # projections, and XLA would drop the neighbour products.
    forward = tf.function(
        lambda x: (layer(x, training=True), tf.add_n(layer.losses)),
        jit_compile=True,
    )
    layer_step = layer_cost.layer_step(layer, jit=True)
    runs["layer forward"] = lambda: forward(x)
    runs["layer step"] = lambda: layer_step(x, u)
    for name, function in (("statistics", statistics), ("gram", gram)):
        for jit in (False, True):
            step = tf.function(function, jit_compile=jit)
            runs[(name, jit)] = lambda step=step: step(x)
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--shapes", nargs="*", default=list(layer_cost.SHAPES))
    args = parser.parse_args()
    print(machine())
    rows = []
    for name in args.shapes:
        shape, patch_size = layer_cost.SHAPES[name]
        medians = interleaved_medians(
            candidates_for(shape, patch_size),
            repeats=args.repeats, warmup=args.warmup,
        )
        t = {key: 1e3 * value[0] for key, value in medians.items()}
        rows.append([
            name, f"{t['floor']:.2f}",
            f"{t[('statistics', False)]:.2f} / {t[('statistics', True)]:.2f}",
            f"{t[('statistics', True)] / t['floor']:.2f}",
            f"{t[('gram', False)]:.2f} / {t[('gram', True)]:.2f}",
            f"{t[('gram', True)] / t[('gram', False)]:.2f}",
            f"{t['layer forward']:.2f} / {t['layer step']:.2f}",
            f"{t[('statistics', True)] / t['layer step']:.2f}",
        ])
        print(rows[-1], flush=True)
    print()
    print(f"Forward statistics and one Gram matrix, milliseconds, medians of "
          f"{args.repeats} interleaved rounds after {args.warmup} warm-up "
          f"rounds (TensorFlow ops / XLA-compiled).")
    print(table(["shape", "floor ms (fwd+bwd)", "statistics ms (TF / XLA)",
                 "XLA statistics / floor", "one Gram ms (TF / XLA)",
                 "XLA / TF (Gram)",
                 "XLA layer ms (forward / forward+backward)",
                 "XLA statistics / XLA layer forward+backward"], rows))


if __name__ == "__main__":
    main()
