"""The layer's cost at two revisions of `keras_ersm/energy.py`, side by side.

A change to the energy kernels is judged by timing the old and the new code
in the same run (interleaved rounds, medians), not across runs: on a shared
machine the floor itself moves by 1.5x between runs. The old `energy.py` is
read from git (`--base`, HEAD by default) into a module of its own; each
candidate's step is traced with `keras_ersm.energy.energy_mask` pointing at
its revision (only energy.py is taken from the old revision; the rest of
the package is the working tree's). Forward+backward / floor, as in
layer_cost.py, for one formulation in the default and whole-step XLA
configurations.

    python benchmarks/compare_revisions.py [--base HEAD]
        [--formulation reference] [--repeats 15] [--shapes ...]
"""

import argparse
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
from keras_ersm import energy  # noqa: E402

CONFIGS = ("default", "xla")


def energy_at(revision):
    """`keras_ersm/energy.py` as it is at git `revision`, as a module."""
    source = subprocess.run(
        ["git", "show", f"{revision}:keras_ersm/energy.py"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    module = types.ModuleType(f"energy_at_{revision}")
    exec(compile(source, f"{revision}:keras_ersm/energy.py", "exec"),
         module.__dict__)
    return module


def candidates_for(shape, patch_size, formulation, base):
    """Zero-argument runs: the floors, and the layer at `base` and now."""
    x, u, m = layer_cost.step_inputs(shape)
    runs = {}
    for config in CONFIGS:
        floor = layer_cost.floor_step(config == "xla")
        runs[("floor", config)] = lambda floor=floor: floor(x, m, u)
    current = energy.energy_mask
    for version, energy_mask in (("base", base.energy_mask),
                                 ("current", current)):
        for config in CONFIGS:
            layer = layer_cost.make_energy_mask(formulation, patch_size, shape)
            step = layer_cost.layer_step(layer, jit=config == "xla")
            energy.energy_mask = energy_mask
            try:
                step(x, u)  # traced now, with this revision's kernels
            finally:
                energy.energy_mask = current
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
    base = energy_at(args.base)
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
