"""The GPU check on Keras's JAX backend: no TensorFlow needed.

Called by `gpu_check.py` when the Keras backend is JAX (the GPU machine we
can borrow has JAX with CUDA but no TensorFlow). Prints five tables, each
as soon as it is measured:

1. Parity on the device: the layer against the authors' numbers on the
   public fixture cases (`tests/data/ersm_reference_public.npz`, as
   `tests/layers/test_energy_mask.py` checks them on TensorFlow), jitted,
   under JAX's default float32 matmul precision: the largest error of each
   quantity relative to its largest magnitude, and whether all are within
   the tests' tolerance.
2. The largest change of a float32 layer's mask and energy between JAX's
   default float32 matmul precision (TensorFloat-32 on recent NVIDIA GPUs)
   and "highest"; zero on a CPU.
3. EnergyMask forward+backward (gradients of the output and the energy
   loss with respect to the map and the weights) against the floor
   (x * m, a (B, H, W, 1) mask), jitted, at the shapes of `layer_cost.py`,
   for float32, bfloat16 and float16 maps (the layer under the matching
   mixed-precision policy); medians of interleaved rounds.
4. A ResNet50 (weights=None) training step (`model.train_step`, jitted,
   SGD) under mixed_float16 and mixed_bfloat16: no mask, a mask at the
   head, a mask after conv4_block6_out; all six steps timed side by side
   (`--smoke`: mixed_bfloat16 only).
5. The device memory each of those steps needs, from XLA's compiled
   memory analysis: arguments + outputs + temporaries - donated (aliased)
   buffers.
"""

import os

import jax
import jax.numpy as jnp
import keras
import numpy as np

from _cases import MASK_CANDIDATES
from _cases import SHAPES
from _cases import SMOKE_SHAPES
from _cases import make_energy_mask
from _cases import resnet50
from _cases import use_map_dtype
from _timing import interleaved_medians
from _timing import table
from keras_ersm.layers.energy_mask import EnergyMask

FIXTURE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "tests", "data", "ersm_reference_public.npz",
)
FIXTURE_CASES = ("p1_square", "p2_square", "p1_rect_T2")
# Those of tests/layers/test_energy_mask.py.
RTOL, ATOL = 1e-4, 1e-5
PARITY_KEYS = ("y_nhwc", "reg", "grad_x_nhwc", "grad_w_ppc", "z",
               "keep_prob", "energy")
RESNET_POLICIES = ("mixed_float16", "mixed_bfloat16")
PLACEMENTS = ("none", "head", "mid")


def fixture_case(case):
    """One case of the authors' parity fixture, as a dict of arrays."""
    with np.load(FIXTURE) as archive:
        return {key.split("/", 1)[1]: archive[key]
                for key in archive.files if key.startswith(f"{case}/")}


def _state(layer):
    return ([v.value for v in layer.trainable_variables],
            [v.value for v in layer.non_trainable_variables])


def parity_row(case):
    """`case`'s largest errors against the authors, relative to each
    quantity's largest magnitude, and whether all are within tolerance."""
    data = fixture_case(case)
    layer = EnergyMask.from_preset(
        "authors",
        patch_size=int(data["patch_size"]),
        unary_weight=float(data["lambda_u"]),
        pairwise_weight=float(data["gamma_p"]),
        temperature=float(data["temperature"]),
        position_bias=True,
    )
    layer.build(data["x_nhwc"].shape)
    layer.score_kernel.assign(data["w_ppc"])
    layer.score_bias.assign(data["b_grid"])
    trainable, non_trainable = _state(layer)
    kernel_index = layer.trainable_variables.index(layer.score_kernel)

    def objective(trainable, x):
        outputs, _, losses = layer.stateless_call(
            trainable, non_trainable, x, return_losses=True
        )
        (reg,) = losses
        return jnp.mean(jnp.square(outputs)) + reg, (outputs, reg)

    x = jnp.asarray(data["x_nhwc"])
    (_, (outputs, reg)), (grad_trainable, grad_x) = jax.jit(
        jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)
    )(trainable, x)
    grids = jax.jit(layer.explain)(x)
    got = dict(zip(PARITY_KEYS, (
        outputs, reg, grad_x, grad_trainable[kernel_index],
        grids["score"], grids["keep"], grids["energy"],
    )))
    errors = []
    within = True
    for key in PARITY_KEYS:
        value, expected = np.asarray(got[key]), data[key]
        errors.append(np.max(np.abs(value - expected))
                      / np.max(np.abs(expected)))
        within &= np.allclose(value, expected, rtol=RTOL, atol=ATOL)
    return [case] + [f"{e:.1e}" for e in errors] + ["yes" if within else "NO"]


def precision_rows(shape):
    """Largest change of mask and energy, default vs "highest" precision."""
    features = jnp.asarray(np.maximum(
        np.random.default_rng(0).normal(size=shape), 0), "float32")
    rows = []
    for formulation in ("reference", "coherent"):
        layer = EnergyMask.from_preset(
            "authors", formulation=formulation,
            score_kernel_initializer=keras.initializers.RandomNormal(seed=0),
        )
        layer.build(shape)
        default = jax.jit(layer.explain)(features)
        with jax.default_matmul_precision("highest"):
            # A new jitted function, traced under this setting.
            highest = jax.jit(layer.explain)(features)
        mask_change = jnp.max(jnp.abs(default["mask"] - highest["mask"]))
        energy_change = jnp.max(
            jnp.abs(default["energy"] - highest["energy"])
        ) / jnp.max(jnp.abs(highest["energy"]))
        rows.append([formulation, f"{float(mask_change):.2e}",
                     f"{float(energy_change):.2e}"])
    return rows


def floor_step():
    """Gradients of `x * m` with upstream `u`, jitted."""

    @jax.jit
    def step(x, m, u):
        _, pullback = jax.vjp(lambda x, m: x * m, x, m)
        return pullback(u)

    return step


def layer_step(layer):
    """Gradients of the layer's output (upstream `u`) and its energy loss
    (upstream 1) with respect to the map and the weights, jitted."""
    trainable, non_trainable = _state(layer)

    def forward(trainable, x):
        outputs, _, losses = layer.stateless_call(
            trainable, non_trainable, x, training=True, return_losses=True
        )
        return outputs, losses[0]

    @jax.jit
    def step(x, u):
        (_, loss), pullback = jax.vjp(forward, trainable, x)
        return pullback((u, jnp.ones_like(loss)))

    return step


def step_inputs(shape, dtype):
    """`(x, u, m)` of `dtype` on the device, as layer_cost.step_inputs."""
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal(shape), 0)
    u = rng.standard_normal(shape)
    m = rng.uniform(size=tuple(shape[:3]) + (1,))
    return tuple(jnp.asarray(a, dtype) for a in (x, u, m))


def layer_cost_rows(shapes, repeats, warmup):
    """Per shape and map dtype: reference / floor, coherent / floor, floor
    milliseconds, timed side by side."""
    rows = []
    for name, (shape, patch_size) in shapes.items():
        for dtype in ("float32", "bfloat16", "float16"):
            x, u, m = step_inputs(shape, dtype)
            floor = floor_step()
            runs = {"floor": lambda: jax.block_until_ready(floor(x, m, u))}
            use_map_dtype(dtype)
            for formulation in MASK_CANDIDATES:
                step = layer_step(
                    make_energy_mask(formulation, patch_size, shape)
                )
                runs[formulation] = (
                    lambda step=step: jax.block_until_ready(step(x, u))
                )
            keras.mixed_precision.set_global_policy("float32")
            t = {k: v[0] for k, v in
                 interleaved_medians(runs, repeats, warmup).items()}
            rows.append([name, dtype]
                        + [f"{t[c] / t['floor']:.2f}" for c in MASK_CANDIDATES]
                        + [f"{1e3 * t['floor']:.3f}"])
    return rows


def compiled_train_step(model, images, labels):
    """`model.train_step`, compiled for one batch, and its initial state.

    Returns:
        `(compiled, state)`: the compiled step (its state argument donated
        off a CPU) and the model's state as `train_step` takes it.
    """
    # Builds the model's losses, metrics and optimizer as fit does.
    model._symbolic_build(data_batch=(images, labels, None))
    state = tuple([v.value for v in variables] for variables in (
        model.trainable_variables, model.non_trainable_variables,
        model.optimizer.variables, model.metrics_variables))
    donate = () if jax.default_backend() == "cpu" else (0,)
    compiled = jax.jit(model.train_step, donate_argnums=donate).lower(
        state, (images, labels)).compile()
    return compiled, state


def step_bytes(compiled):
    """Device bytes a compiled step needs: arguments + outputs +
    temporaries - donated (aliased) buffers."""
    analysis = compiled.memory_analysis()
    return (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def resnet_tables(size, batch, repeats, warmup, policies=RESNET_POLICIES):
    """The step-time and step-memory tables of the ResNet50 steps, three
    per policy."""
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(size=(batch, size, size, 3)), "float32")
    labels = jnp.asarray(rng.integers(0, 10, size=(batch,)), "int32")
    runs, memory = {}, {}
    for policy in policies:
        keras.mixed_precision.set_global_policy(policy)
        for placement in PLACEMENTS:
            model = resnet50(None if placement == "none" else placement,
                             size, jit_compile=True)
            compiled, state = compiled_train_step(model, images, labels)
            memory[(policy, placement)] = step_bytes(compiled)
            holder = [state]

            def run(compiled=compiled, holder=holder):
                _, holder[0] = compiled(holder[0], (images, labels))
                jax.block_until_ready(holder[0])

            runs[(policy, placement)] = run
    keras.mixed_precision.set_global_policy("float32")
    medians = {k: v[0] for k, v in
               interleaved_medians(runs, repeats, warmup).items()}
    time_rows, memory_rows = [], []
    for policy in policies:
        base, base_bytes = medians[(policy, "none")], memory[(policy, "none")]
        for placement in PLACEMENTS:
            t, b = medians[(policy, placement)], memory[(policy, placement)]
            time_rows.append([policy, placement, f"{1e3 * t:.2f}",
                              f"{t / base - 1:+.1%}"])
            memory_rows.append([policy, placement, f"{b / 2**20:.1f}",
                                f"{(b - base_bytes) / 2**20:+.2f}"])
    return time_rows, memory_rows


def run(smoke):
    """Measures and prints the five tables.

    Args:
        smoke: bool, tiny sizes and 2 rounds (checks the script runs).
    """
    size, batch, repeats, warmup = (224, 64, 20, 3)
    shapes, precision_shape = SHAPES, (8, 14, 14, 256)
    policies = RESNET_POLICIES
    if smoke:
        size, batch, repeats, warmup = (32, 2, 2, 1)
        shapes, precision_shape = SMOKE_SHAPES, (2, 4, 4, 32)
        # Each ResNet50 step compiles for a minute on a CPU; a CPU emulates
        # float16, and table 3 runs it already.
        policies = ("mixed_bfloat16",)
    print("devices:", [str(d) for d in jax.devices()])
    if jax.default_backend() != "gpu":
        print("NOTE: no GPU visible; numbers below are not the GPU check.")

    print()
    print("1. Parity with the authors' fixture on "
          f"{jax.default_backend()}, jitted, default precision: largest "
          "|error| / largest |authors'|")
    print(table(["case", *PARITY_KEYS, f"within rtol {RTOL}, atol {ATOL}"],
                [parity_row(case) for case in FIXTURE_CASES]), flush=True)

    print()
    print("2. float32 matmul precision default vs highest, float32 layer, "
          f"{precision_shape}: largest change")
    print(table(["formulation", "mask (abs)", "energy (rel. to max)"],
                precision_rows(precision_shape)), flush=True)

    print()
    print(f"3. Layer forward+backward / floor, jitted; medians of {repeats} "
          "rounds")
    print(table(["shape", "map dtype", *MASK_CANDIDATES, "floor ms"],
                layer_cost_rows(shapes, repeats, warmup)), flush=True)

    time_rows, memory_rows = resnet_tables(size, batch, repeats, warmup,
                                           policies)
    print()
    print(f"4. ResNet50 {size}x{size}, batch {batch}, jitted train_step; "
          f"medians of {repeats} rounds")
    print(table(["policy", "mask", "median ms", "vs none"], time_rows))
    print()
    print("5. Device memory of one training step (XLA's memory analysis)")
    print(table(["policy", "mask", "MiB", "extra MiB"], memory_rows),
          flush=True)
