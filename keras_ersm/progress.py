"""Announcing the phases of a long run, and Keras progress bars that stay
readable in a log file.

`ersm` announces every phase of a run with its position and time:

    phases = Phases(2)
    with phases.phase("Training the baseline"):
        model.fit(data, verbose=phases.verbose)
    with phases.phase("Measuring accuracy"):
        evaluation.top1_accuracy(model, test, verbose=phases.verbose)

prints

    [1/2] Training the baseline
    ... (fit's progress)
    [1/2] Training the baseline: 41.0 s (0:41 in all)
    [2/2] Measuring accuracy
    ... (a progress bar over the test batches)
    [2/2] Measuring accuracy: 3.2 s (0:44 in all)

A new phase is one more `with phases.phase(name):` block, counted in the
`total` the `Phases` is made with.
"""

import contextlib
import sys
import time

from keras_ersm import validation


def keras_verbose(quiet=False):
    """The `verbose` argument of Keras progress bars for this process.

    `keras.utils.Progbar` (and so `fit`) redraws its bar in place with
    carriage returns and terminal colour codes whenever `verbose=1`: its
    terminal test is true on every POSIX system, also when the output goes
    to a file or a pipe, which then fills with every redraw. `verbose=2`
    writes one plain line per epoch (or per measurement) instead.

    Args:
        quiet: bool, show no progress at all.

    Returns:
        0 when `quiet`; 1 (a bar redrawn in place, with an estimate of the
        time left) when standard output is a terminal; 2 otherwise.

    Example:

    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> history = model.fit(train, epochs=1, verbose=keras_verbose(quiet=True))
    >>> keras_verbose(quiet=True)
    0
    """
    if validation.check_bool("keras_verbose", "quiet", quiet):
        return 0
    isatty = getattr(sys.stdout, "isatty", None)
    return 1 if isatty is not None and isatty() else 2


def format_seconds(seconds):
    """`seconds` as `"4.2 s"` below a minute, else as `"m:ss"` (or
    `"h:mm:ss"`)."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    return clock(seconds)


def clock(seconds):
    """`seconds` as `"m:ss"`, or `"h:mm:ss"` from an hour on."""
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{seconds:02d}"
    return f"{minutes}:{seconds:02d}"


class Phases:
    """The numbered phases of a run, announced with their elapsed times.

    Each phase prints `"[k/total] name"` as it begins and
    `"[k/total] name: <its time> (<time since the first phase> in all)"`
    as it ends (not when it raises). Inside a phase, Keras progress bars
    take `verbose=phases.verbose`.

    Args:
        total: int >= 1, the number of phases the run announces.
        quiet: bool, announce nothing; `verbose` is then 0.

    Example:

    >>> phases = Phases(2)
    >>> with phases.phase("Building the data"):
    ...     data = list(range(3))
    [1/2] Building the data
    [1/2] Building the data: 0.0 s (0:00 in all)
    """

    def __init__(self, total, *, quiet=False):
        self.total = validation.check_integer("Phases", "total", total, 1)
        self.quiet = validation.check_bool("Phases", "quiet", quiet)
        self.verbose = keras_verbose(self.quiet)
        self.count = 0
        self._started = None

    def _print(self, text):
        if not self.quiet:
            print(text, flush=True)

    @contextlib.contextmanager
    def phase(self, name):
        """Announce the next phase, `name`, for the duration of the block.

        Args:
            name: str, what the phase does, e.g. `"Training the baseline"`.

        Raises:
            ValueError: if the run has already announced `total` phases.
        """
        if self.count >= self.total:
            raise ValueError(
                f"Phases: the phase {name!r} is one more than argument "
                f"`total` ({self.total}); count every phase in `total`."
            )
        self.count += 1
        now = time.monotonic()
        if self._started is None:
            self._started = now
        position = f"[{self.count}/{self.total}] {name}"
        self._print(position)
        yield
        end = time.monotonic()
        self._print(
            f"{position}: {format_seconds(end - now)} "
            f"({clock(end - self._started)} in all)"
        )
