"""The benchmark scripts still run, on tiny shapes (their numbers are in
BENCHMARKS.md; nothing here is timed)."""

import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                          "benchmarks")
sys.path.insert(0, BENCHMARKS)

import layer_cost  # noqa: E402
import xla_memory  # noqa: E402
from _timing import interleaved_medians  # noqa: E402


def test_layer_cost_candidates_run_side_by_side():
    runs = layer_cost.candidates_for((2, 4, 4, 8), 2, peers=True)
    assert {("floor", "plain"), ("floor", "xla"), ("reference", "default"),
            ("coherent", "xla"), ("cbam_spatial", "plain")} <= set(runs)
    medians = interleaved_medians(runs, repeats=2, warmup=1)
    for median, times in medians.values():
        assert len(times) == 2 and median > 0


@pytest.mark.parametrize("candidate", ["floor", "reference"])
def test_xla_memory_reads_the_buffer_assignment(candidate):
    # A compiled step holds at least its input, the upstream gradient and
    # the input gradient (three maps); the report's format is XLA's, so
    # this fails if a TensorFlow upgrade changes it.
    map_bytes = 4 * 2 * 4 * 6 * 16
    allocated, live = xla_memory.compiled_bytes(
        "layer", "2,4,6,16", "1", candidate, "float32"
    )
    assert 3 * map_bytes <= live <= allocated < 100 * map_bytes
