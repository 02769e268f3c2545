"""The layer's cost at two revisions of its kernel, side by side.

A change to the energy kernels is judged by timing the old and the new code
in the same run (interleaved rounds, medians), not across runs: on a shared
machine the floor itself moves by 1.5x between runs. The old kernel,
`keras_ersm/energy_kernel.py` (`keras_ersm/energy.py` at revisions before it
had a module of its own), is read from git (`--base`, HEAD by default) into
a module of its own; each candidate's step is traced with
`keras_ersm.energy_kernel.apply_energy_mask` pointing at its revision (only
the kernel is taken from the old revision; the rest of the package is the
working tree's). Forward+backward / floor, as in layer_cost.py, for one
formulation in the default and whole-step XLA configurations.

    python benchmarks/compare_revisions.py [--base HEAD]
        [--formulation reference] [--repeats 15] [--shapes ...]
"""

import argparse
import inspect
import os
import subprocess
import sys
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import layer_cost  # noqa: E402
from _timing import interleaved_medians, machine, table  # noqa: E402
from keras_ersm import energy_kernel  # noqa: E402

CONFIGS = ("default", "xla")
# Where the layer's kernel function is, newest layout first.
KERNEL_PLACES = (
    ("keras_ersm/energy_kernel.py", "apply_energy_mask"),
    ("keras_ersm/energy.py", "energy_mask"),
)


def kernel_at(revision):
    """The layer's kernel function as it is at git `revision`."""
    for path, name in KERNEL_PLACES:
        shown = subprocess.run(
            ["git", "show", f"{revision}:{path}"],
            cwd=ROOT, capture_output=True, text=True,
        )
        if shown.returncode == 0 and f"def {name}(" in shown.stdout:
            module = types.ModuleType(f"kernel_at_{revision}")
            exec(compile(shown.stdout, f"{revision}:{path}", "exec"),
                 module.__dict__)
            return _taking_options(getattr(module, name))
    raise ValueError(f"No layer kernel at revision {revision!r}.")


def _taking_options(kernel):
    """`kernel` called as the layer calls it now, `(x, kernel, bias,
    options, noise)`; kernels before `MaskOptions` took the options as
    keywords, and only those their revision knew of."""
    parameters = inspect.signature(kernel).parameters
    if "options" in parameters:
        return kernel

    def call(x, score_kernel, bias, options, noise=None):
        known = {name: value for name, value in options.to_dict().items()
                 if name in parameters}
        if "noise" in parameters:
            known["noise"] = noise
        return kernel(x, score_kernel, bias, **known)

    return call


def candidates_for(shape, patch_size, formulation, base):
    """Zero-argument runs: the floors, and the layer with the kernel `base`
    and with the working tree's."""
    x, u, m = layer_cost.step_inputs(shape)
    runs = {}
    for config in CONFIGS:
        floor = layer_cost.floor_step(config == "xla")
        runs[("floor", config)] = lambda floor=floor: floor(x, m, u)
    current = energy_kernel.apply_energy_mask
    for version, kernel in (("base", base), ("current", current)):
        for config in CONFIGS:
            layer = layer_cost.make_energy_mask(formulation, patch_size, shape)
            step = layer_cost.layer_step(layer, jit=config == "xla")
            energy_kernel.apply_energy_mask = kernel
            try:
                step(x, u)  # traced now, with this revision's kernel
            finally:
                energy_kernel.apply_energy_mask = current
            runs[(version, config)] = lambda step=step: step(x, u)
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="HEAD")
    parser.add_argument("--formulation", default="reference",
                        choices=("reference", "coherent"))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--shapes", nargs="*", default=list(layer_cost.SHAPES))
    args = parser.parse_args()
    print(machine())
    base = kernel_at(args.base)
    rows = []
    for name in args.shapes:
        shape, patch_size = layer_cost.SHAPES[name]
        medians = interleaved_medians(
            candidates_for(shape, patch_size, args.formulation, base),
            repeats=args.repeats, warmup=args.warmup,
        )
        t = {key: value[0] for key, value in medians.items()}
        row = [name]
        for config in CONFIGS:
            floor = t[("floor", config)]
            row.append(f"{t[('base', config)] / floor:.2f} -> "
                       f"{t[('current', config)] / floor:.2f}")
        rows.append(row)
        print(row, flush=True)
    print()
    print(f"{args.formulation} formulation, forward+backward / floor, "
          f"{args.base} -> working tree; medians of {args.repeats} "
          f"interleaved rounds")
    print(table(["shape", "default", "whole-step XLA"], rows))


if __name__ == "__main__":
    main()
