"""Phases: numbered announcements with times; Keras verbosity for logs."""

import io
import re
import sys

import pytest

from keras_ersm import progress


def test_phases_announce_their_position_and_times(capsys):
    phases = progress.Phases(2)
    assert phases.verbose == 2  # pytest captures stdout: not a terminal
    with phases.phase("Building the data"):
        print("inside")
    with phases.phase("Training the baseline"):
        pass
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["[1/2] Building the data", "inside"]
    assert re.fullmatch(r"\[1/2\] Building the data: \d+\.\d s "
                        r"\(0:00 in all\)", lines[2]), lines[2]
    assert lines[3] == "[2/2] Training the baseline"
    assert re.fullmatch(r"\[2/2\] Training the baseline: \d+\.\d s "
                        r"\(0:00 in all\)", lines[4]), lines[4]
    assert len(lines) == 5


def test_a_failing_phase_is_not_reported_done(capsys):
    phases = progress.Phases(1)
    with pytest.raises(RuntimeError):
        with phases.phase("Exporting"):
            raise RuntimeError("disk full")
    assert capsys.readouterr().out == "[1/1] Exporting\n"


def test_more_phases_than_total_is_an_error_naming_it(capsys):
    phases = progress.Phases(1)
    with phases.phase("Building the data"):
        pass
    with pytest.raises(ValueError, match=r"Phases: the phase 'Training' is "
                       r"one more than argument `total` \(1\)"):
        with phases.phase("Training"):
            pass
    with pytest.raises(ValueError, match="argument `total` must be an "
                       "integer >= 1; received 0"):
        progress.Phases(0)


def test_quiet_phases_print_nothing_and_turn_progress_bars_off(capsys):
    phases = progress.Phases(1, quiet=True)
    with phases.phase("Training"):
        pass
    assert capsys.readouterr().out == ""
    assert phases.verbose == 0


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_keras_progress_bars_redraw_only_on_a_terminal(monkeypatch):
    assert progress.keras_verbose() == 2
    assert progress.keras_verbose(quiet=True) == 0
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert progress.keras_verbose() == 1


@pytest.mark.parametrize("seconds, text", [
    (4.25, "4.2 s"), (59.9, "59.9 s"), (61, "1:01"), (3725, "1:02:05"),
])
def test_format_seconds(seconds, text):
    assert progress.format_seconds(seconds) == text
