"""Forward+backward cost of EnergyMask against the memory floor.

The floor is `y = x * m` with a (B, H, W, 1) mask broadcast over channels,
forward and backward (gradients with respect to x and m): any masking layer
must at least read the map, write the output, and do the same in the backward
pass. Every candidate computes the gradient of its output, with an upstream
gradient `u` of the output's shape, with respect to its input and its weights
(for EnergyMask also of its energy loss, upstream 1), inside one
`tf.function`. All candidates of a shape are timed side by side: in each of
`--repeats` rounds every candidate runs once, in a fresh random order; the
table gives medians and ratios of medians.

Configurations (TensorFlow backend, CPU):

* `default`: the outer step is a plain graph (`tf.function`, no XLA) — what
  `model.fit` uses on a CPU-only machine (`jit_compile="auto"` resolves to
  False there) — and EnergyMask runs its own XLA-compiled energy kernel
  inside it.
* `plain`: plain graph and the kernel traced under
  `keras_ersm.xla.serving_trace()` (no XLA anywhere; what exported graphs
  contain).
* `xla`: the whole step in `tf.function(jit_compile=True)` — what `model.fit`
  uses by default when a GPU is present (`jit_compile="auto"` resolves to True
  for models whose layers all support XLA); the kernel is inlined.

Ratios are against the floor measured in the same outer configuration
(plain-graph floor for `default` and `plain`, XLA floor for `xla`).

    python benchmarks/layer_cost.py [--repeats 20] [--shapes ...] [--peers]
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# The cases live in _cases (no TensorFlow, for the GPU check on JAX); the
# other benchmarks take them from here.
from _cases import MAP_DTYPES  # noqa: E402,F401
from _cases import MASK_CANDIDATES  # noqa: E402
from _cases import SHAPES  # noqa: E402
from _cases import make_energy_mask  # noqa: E402
from _cases import use_map_dtype  # noqa: E402,F401
from _timing import interleaved_medians, machine, table  # noqa: E402
from keras_ersm import xla  # noqa: E402


def step_inputs(shape, dtype="float32"):
    """`(x, u, m)` of `dtype`, seeded: a ReLU-like (B, H, W, C) map, an
    upstream gradient of its shape and a (B, H, W, 1) mask."""
    rng = np.random.default_rng(0)
    x = tf.constant(np.maximum(rng.standard_normal(shape), 0), dtype)
    u = tf.constant(rng.standard_normal(shape), dtype)
    m = tf.constant(rng.uniform(size=tuple(shape[:3]) + (1,)), dtype)
    return x, u, m


def map_bytes(shape, dtype="float32"):
    """Bytes of a map of `shape` and `dtype`."""
    return int(np.prod(shape)) * tf.as_dtype(dtype).size


def _upstream(u, y, after_forward):
    """The upstream gradient of the output `y`.

    `after_forward`: `u * y` (the gradient of `sum(u * y**2) / 2`) instead
    of `u` itself. In a network the upstream gradient exists only once the
    forward pass has run; an input `u` lets XLA's scheduler start the
    backward pass's products with `u` while the forward pass still runs,
    which changes the peak memory (not the time).
    """
    return u * y if after_forward else u


def floor_step(jit, after_forward=False):
    @tf.function(jit_compile=jit)
    def step(x, m, u):
        with tf.GradientTape() as tape:
            tape.watch([x, m])
            y = x * m
        return tape.gradient(
            y, [x, m], output_gradients=_upstream(u, y, after_forward)
        )

    return step


def layer_step(layer, jit, plain=False, after_forward=False):
    def body(x, u):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.add_n(layer.losses)
        return tape.gradient(
            [y, loss],
            [x] + layer.trainable_weights,
            output_gradients=[
                _upstream(u, y, after_forward), tf.constant(1.0)
            ],
        )

    step = tf.function(body, jit_compile=jit)
    if not plain:
        return step

    def traced_plain(x, u):
        with xla.serving_trace():
            return step(x, u)

    return traced_plain


def candidates_for(shape, patch_size, peers=False):
    x, u, m = step_inputs(shape)
    runs = {}
    for jit in (False, True):
        step = floor_step(jit)
        runs[("floor", "xla" if jit else "plain")] = (
            lambda step=step: step(x, m, u)
        )
    for formulation in MASK_CANDIDATES:
        for config in ("default", "plain", "xla"):
            layer = make_energy_mask(formulation, patch_size, shape)
            step = layer_step(
                layer, jit=config == "xla", plain=config == "plain"
            )
            runs[(formulation, config)] = lambda step=step: step(x, u)
    if peers:
        import peers as peer_layers

        for name, build in peer_layers.PEERS.items():
            for jit in (False, True):
                layer = build()
                layer.build(shape)
                step = peer_layers.peer_step(layer, jit)
                runs[(name, "xla" if jit else "plain")] = (
                    lambda step=step: step(x, u)
                )
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES))
    parser.add_argument("--peers", action="store_true",
                        help="also time CBAM spatial attention and DropBlock")
    args = parser.parse_args()
    print(machine())
    rows = []
    peer_rows = []
    for name in args.shapes:
        shape, patch_size = SHAPES[name]
        runs = candidates_for(shape, patch_size, peers=args.peers)
        medians = interleaved_medians(
            runs, repeats=args.repeats, warmup=args.warmup
        )
        t = {key: value[0] for key, value in medians.items()}
        floor = {"default": t[("floor", "plain")],
                 "plain": t[("floor", "plain")],
                 "xla": t[("floor", "xla")]}
        row = [name, f"{1e3 * floor['plain']:.2f} / {1e3 * floor['xla']:.2f}"]
        for formulation in MASK_CANDIDATES:
            for config in ("default", "plain", "xla"):
                row.append(f"{t[(formulation, config)] / floor[config]:.2f}")
        row.append(
            f"{t[('coherent', 'default')] / t[('reference', 'default')]:.2f}"
        )
        row.append(
            f"{t[('reference', 'plain')] / t[('reference', 'default')]:.2f}"
        )
        rows.append(row)
        if args.peers:
            import peers as peer_layers

            prow = [name]
            for peer in peer_layers.PEERS:
                prow.append(
                    f"{t[(peer, 'plain')] / floor['plain']:.2f} / "
                    f"{t[(peer, 'xla')] / floor['xla']:.2f}"
                )
            for peer in peer_layers.PEERS:
                prow.append(
                    f"{t[('reference', 'default')] / t[(peer, 'plain')]:.2f}"
                    f" / {t[('reference', 'xla')] / t[(peer, 'xla')]:.2f}"
                )
            peer_rows.append(prow)
        print(f"{name}: " + ", ".join(
            f"{'-'.join(k)}={1e3 * v:.2f}ms" for k, v in sorted(t.items())
        ), flush=True)
    print()
    print(f"Medians of {args.repeats} interleaved rounds after "
          f"{args.warmup} warm-up rounds; ratios to the floor.")
    print(table(
        ["shape", "floor ms (plain / xla)",
         "ref default", "ref plain", "ref xla",
         "coh default", "coh plain", "coh xla",
         "learned default", "learned plain", "learned xla",
         "coh/ref (default)", "XLA-kernel speed-up (ref plain/default)"],
        rows,
    ))
    if args.peers:
        import peers as peer_layers

        print()
        print("Peers (plain graph / whole-step XLA); EnergyMask reference "
              "relative to each peer (default vs plain / xla vs xla).")
        print(table(
            ["shape"]
            + [f"{p} / floor" for p in peer_layers.PEERS]
            + [f"ERSM ref / {p}" for p in peer_layers.PEERS],
            peer_rows,
        ))


if __name__ == "__main__":
    main()
