"""The plain progress lines (a pipe, a CI log): throttled, but a finished call always prints."""

import io

from rich.console import Console

from parity.run.progress import Display


def _display():
    out = io.StringIO()
    return Display(Console(file=out, width=200), live=False, every_s=3600), out


def test_a_finished_batch_prints_its_final_count():
    """V0 0.8.5 finishes a whole batch in one step: its first update and its last come within
    the throttle interval, and the last one (64/64) must still print."""
    display, out = _display()
    with display:
        display.progress({"scenario": "s", "role": "baseline", "done": 1, "total": 64})
        display.progress({"scenario": "s", "role": "baseline", "done": 64, "total": 64})
    lines = out.getvalue().splitlines()
    assert lines == ["  s [baseline]: 64/64 requests, 0s"]


def test_unfinished_updates_are_throttled():
    display, out = _display()
    with display:
        for done in range(1, 10):
            display.progress({"scenario": "s", "role": "candidate", "done": done, "total": 64})
    assert out.getvalue() == ""


def test_calls_of_one_request_print_no_progress_line():
    """The runtime probes make dozens of one-request calls (64 lines in the quick suite's log
    before): their scenario's log line says what they did."""
    display, out = _display()
    with display:
        for _ in range(5):
            display.progress({"scenario": "s", "role": "candidate", "done": 1, "total": 1})
    assert out.getvalue() == ""
