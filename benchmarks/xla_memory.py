"""Peak memory of whole-step XLA training steps, from XLA's buffer assignment.

Under `jit_compile=True` (what `model.fit` uses by default when a GPU is
visible) a training step is one XLA executable whose buffers are assigned
when it is compiled. Two numbers per step, exact and repeatable (the CPU
allocator's statistics of the same steps vary by hundreds of MiB from run
to run, see train_step.py): what it allocates, the "Total bytes used" of
its memory-usage report (parameters, outputs, and one preallocated block
into which its temporaries are packed), and the most bytes live at one
step of its schedule, from the buffer assignment (`live_peak_bytes`: what
perfect packing would need). Each configuration is compiled in a subprocess with
`XLA_FLAGS=--xla_dump_to=<temporary folder>`; the largest module's
reports are read.

These are XLA's *CPU* decisions (fusion, buffer reuse): a proxy for the GPU
default, not a GPU measurement (gpu_check.py measures that on a GPU).

Two tables, extra bytes (allocated, live) relative to the size of the
masked feature map:

1. The layer alone, forward+backward (as in layer_cost.py) on its shapes:
   EnergyMask (reference, coherent) against the floor `x * m`, with maps of
   `--dtype` (float32 by default; bfloat16 or float16 with the layers under
   the matching mixed-precision policy). The upstream gradient is computed
   from the output (`u * y`, layer_cost's `after_forward`), as in a
   network, where it exists only once the forward pass has run.
2. One ResNet50 training step (weights=None, `--size` 224, `--batch` 32,
   train_step.resnet50 with `jit_compile=True`): with a mask at the head
   (7x7x2048) or after conv4_block6_out (14x14x1024): EnergyMask reference
   and coherent, the floor as a layer `x * sigmoid(b)`, a CBAM spatial
   attention block and a 1x1-convolution gate (peers.py), each against the
   same network without one.

    python benchmarks/xla_memory.py [--size 224] [--batch 32]
        [--dtype float32] [--skip-layer] [--skip-resnet]
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import layer_cost  # noqa: E402
import train_step  # noqa: E402
from _cases import MASK_CANDIDATES  # noqa: E402
from _timing import machine, table  # noqa: E402

MASKS = ("reference", "coherent", "floor", "cbam_spatial", "conv_gate")


def compiled_bytes(*child_arguments):
    """Memory of the largest module compiled by a child run, from XLA.

    Returns:
        `(allocated, live)`: the bytes the executable allocates ("Total
        bytes used": parameters, outputs and the packed block of
        temporaries) and the most bytes live at one step of its schedule
        (`live_peak_bytes`: what perfect packing would need).
    """
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, XLA_FLAGS=f"--xla_dump_to={folder}")
        child = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child",
             *child_arguments],
            env=env, capture_output=True, text=True,
        )
        if child.returncode:
            raise RuntimeError(
                f"{child_arguments} failed:\n{child.stderr[-3000:]}"
            )
        modules = []
        for path in glob.glob(f"{folder}/*memory-usage-report.txt"):
            with open(path) as report:
                allocated = re.search(
                    r"Total bytes used: (\d+)", report.read()
                )
            assignment = path.replace("memory-usage-report", "buffer-assignment")
            with open(assignment) as report:
                live = live_peak_bytes(report.read())
            modules.append((int(allocated.group(1)), live))
    if not modules:
        raise RuntimeError("XLA wrote no memory-usage report")
    return max(modules)


def live_peak_bytes(buffer_assignment):
    """The most bytes live at one step of the schedule, from an XLA
    buffer-assignment report.

    Every value has a place (allocation, offset, size) and a live range
    over the schedule's steps (values without one, parameters and
    constants, are live throughout); at each step the byte ranges of the
    live values are merged per allocation, so values that share bytes
    (in-place updates) count once. The report's own "peak usage" line is
    not used: it names a step at which buffers that are live one step
    earlier are already gone (a bfloat16 map and two float32 operands of a
    matrix product: 13.9 MiB reported, 61.9 MiB live).
    """
    places = {}
    for line in buffer_assignment.split("\nTotal bytes used")[0].splitlines():
        allocation = re.match(r"allocation (\d+): size \d+, (.*)", line)
        if allocation:
            # Scalars of reductions' combiner functions, per thread.
            current = (None if allocation.group(2).startswith("thread-local")
                       else int(allocation.group(1)))
            continue
        value = re.match(
            r" value: <\d+ (\S+?)(?:\{\})? @\d+> \(size=(\d+),offset=(\d+)\)",
            line,
        )
        if value and current is not None:
            places.setdefault(value.group(1), []).append(
                (current, int(value.group(3)), int(value.group(2)))
            )
    section = buffer_assignment[buffer_assignment.index("BufferLiveRange:"):]
    ranges = {
        name: (int(start), int(end))
        for name, start, end in re.findall(
            r"^\s+(\S+?)(?:\{\})?:(\d+)-(\d+)$", section, re.M
        )
    }
    last = max(end for _, end in ranges.values())
    peak = 0
    for step in range(last + 1):
        spans = {}
        for name, value_places in places.items():
            start, end = ranges.get(name, (0, last))
            if start <= step <= end:
                for allocation, offset, size in value_places:
                    spans.setdefault(allocation, []).append(
                        (offset, offset + size)
                    )
        live = 0
        for allocation_spans in spans.values():
            covered_to = 0
            for begin, finish in sorted(allocation_spans):
                live += max(0, finish - max(begin, covered_to))
                covered_to = max(covered_to, finish)
        peak = max(peak, live)
    return peak


def _extra(bytes_, baseline, map_bytes):
    extra = bytes_ - baseline
    return f"{extra / 2**20:+.1f} MiB ({extra / map_bytes:+.1%})"


def run_layer_step(shape, patch_size, candidate, dtype):
    """Child: compile and run one whole-step XLA forward+backward.

    `shape` as "B,H,W,C", `patch_size` as text; maps of `dtype`, layers
    under the matching mixed-precision policy.
    """
    layer_cost.use_map_dtype(dtype)
    shape = tuple(int(size) for size in shape.split(","))
    patch_size = int(patch_size)
    x, u, m = layer_cost.step_inputs(shape, dtype)
    if candidate == "floor":
        layer_cost.floor_step(True, after_forward=True)(x, m, u)
    else:
        layer = layer_cost.make_energy_mask(candidate, patch_size, shape)
        layer_cost.layer_step(layer, jit=True, after_forward=True)(x, u)


def mask_factory(mask):
    import peers
    from keras_ersm.layers.energy_mask import EnergyMask

    if mask == "floor":
        return lambda: train_step.StaticMask(name="floor")
    if mask == "cbam_spatial":
        return peers.PEERS["cbam_spatial"]
    if mask == "conv_gate":
        return lambda: peers.ConvGate(name="conv_gate")
    return lambda: EnergyMask(**MASK_CANDIDATES[mask], name="energy_mask")


def run_resnet_step(placement, mask, size, batch):
    """Child: compile and run one whole-step XLA ResNet50 training step."""
    import numpy as np

    model = train_step.resnet50(
        None if placement == "none" else placement, size,
        mask_factory=None if mask == "none" else mask_factory(mask),
        jit_compile=True,
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(batch, size, size, 3)).astype("float32")
    labels = rng.integers(0, 10, size=(batch,))
    model.train_on_batch(images, labels)


def layer_table(dtype):
    rows = []
    for name, (shape, patch_size) in layer_cost.SHAPES.items():
        size = layer_cost.map_bytes(shape, dtype)
        layer = ("layer", ",".join(map(str, shape)), str(patch_size))
        floor = compiled_bytes(*layer, "floor", dtype)
        row = [name, f"{size / 2**20:.1f}",
               f"{floor[0] / 2**20:.1f} / {floor[1] / 2**20:.1f}"]
        for formulation in ("reference", "coherent"):
            measured = compiled_bytes(*layer, formulation, dtype)
            row += [_extra(measured[0], floor[0], size),
                    _extra(measured[1], floor[1], size)]
        rows.append(row)
        print(f"{name}: {row}", flush=True)
    print()
    print(f"Layer alone, whole-step XLA forward+backward, {dtype} maps: "
          "bytes beyond the floor's (x * m), allocated and live at the "
          "peak; % of the map")
    print(table(["shape", "map MiB", "floor MiB (allocated / live)",
                 "reference allocated", "reference live",
                 "coherent allocated", "coherent live"], rows))


def resnet_table(size, batch):
    maps = train_step.masked_map_bytes(size, batch)
    none = compiled_bytes("resnet", "none", "none", str(size), str(batch))
    rows = [["none", "", f"{none[0] / 2**20:.1f} / {none[1] / 2**20:.1f}",
             "", ""]]
    for placement in ("head", "mid"):
        for mask in MASKS:
            measured = compiled_bytes(
                "resnet", placement, mask, str(size), str(batch)
            )
            rows.append([
                placement, mask,
                f"{measured[0] / 2**20:.1f} / {measured[1] / 2**20:.1f}",
                _extra(measured[0], none[0], maps[placement]),
                _extra(measured[1], none[1], maps[placement]),
            ])
            print(f"{rows[-1]}", flush=True)
    print()
    print(f"ResNet50 training step, {size}x{size}, batch {batch}, "
          f"jit_compile=True: bytes beyond the network without a mask, "
          f"allocated and live at the peak; % of the masked map (head "
          f"{maps['head'] / 2**20:.1f} MiB, mid {maps['mid'] / 2**20:.1f} "
          f"MiB)")
    print(table(["placement", "mask", "MiB (allocated / live)",
                 "extra allocated", "extra live"], rows))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *arguments = sys.argv[2:]
        if kind == "layer":
            run_layer_step(*arguments)
        else:
            placement, mask, size, batch = arguments
            run_resnet_step(placement, mask, int(size), int(batch))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", default="float32",
                        choices=layer_cost.MAP_DTYPES,
                        help="dtype of the maps in the layer-alone table "
                             "(layers under the mixed policy)")
    parser.add_argument("--skip-layer", action="store_true")
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    print(machine())
    if not args.skip_layer:
        layer_table(args.dtype)
    if not args.skip_resnet:
        resnet_table(args.size, args.batch)


if __name__ == "__main__":
    main()
