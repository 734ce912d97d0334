"""The live progress line: what a round's progress updates draw on a terminal, and that nothing else keeps them."""

from __future__ import annotations

import io
import logging

from fedmi_flower.analysis.progress import (
    ENDED,
    PROGRESS_KEY,
    PROGRESS_MARK,
    ProgressState,
    RoundProgress,
    decode,
    encode,
)
from fedmi_flower.apps.console import RUN_LOG, install_console
from fedmi_flower.apps.live_line import CLEAR_LINE, StreamEcho


def update(phase="training", done=1, expected=None):
    return encode(ProgressState(2, 5, phase, done, 3, 12.0, expected))


def test_an_update_reads_back_and_says_what_the_round_does():
    state = decode("INFO :      " + update(expected=100.0))  # a verbose console prefixes its level
    assert state == ProgressState(2, 5, "training", 1, 3, 12.0, 100.0)
    assert state.line() == "round 2/5 | training: 1/3 clients done | 12 s, ~88 s left (last round 100 s)"
    assert state.line(elapsed=130.0).endswith("| 130 s, longer than (last round 100 s)")
    server = decode(update(phase="noise floor", done=3))
    assert server.line() == "round 2/5 | server: noise floor (3 of 3 updates in) | 12 s"
    uncounted = decode(encode(ProgressState(1, 5, "training", None, 3, 0.0, None)))
    assert uncounted.line() == "round 1/5 | training: 3 clients | 0 s"
    assert decode("[round 1/5] 3/3 clients | acc 0.5") is None and decode(PROGRESS_MARK + "{broken") is None


def test_on_a_terminal_the_line_is_drawn_in_place_under_the_lines_and_erased_when_the_round_ends():
    out = io.StringIO()
    echo = StreamEcho(out, terminal=True)
    assert echo.line("fedmi: experiment 'x'") is True
    assert echo.line(update(done=0)) is False and echo.line(update(done=1)) is False
    assert echo.line("WARNING: something") is True  # printed above the live line, which is drawn again below it
    echo.line(encode(ProgressState(2, 5, ENDED, 3, 3, 40.0, None)))
    echo.line("[round 2/5] 3/3 clients")
    text = out.getvalue()
    assert text.startswith("fedmi: experiment 'x'\n" + CLEAR_LINE + "round 2/5 | training: 0/3 clients done")
    assert CLEAR_LINE + "WARNING: something\n" + CLEAR_LINE + "round 2/5 | training: 1/3" in text
    assert text.endswith(CLEAR_LINE + "[round 2/5] 3/3 clients\n")
    assert PROGRESS_MARK not in text


def test_off_a_terminal_updates_are_dropped_and_a_chunked_stream_is_cut_at_lines():
    out = io.StringIO()
    echo = StreamEcho(out, terminal=False)
    first, rest = update()[:9], update()[9:]
    echo.write("a line\n" + first)
    echo.write(rest + "\nanother ")
    echo.tick()
    echo.write("line\n")
    echo.close()
    assert out.getvalue() == "a line\nanother line\n"


def test_round_progress_says_nothing_unless_a_runtime_draws_it(caplog):
    with caplog.at_level(logging.INFO, logger="flwr"):
        quiet = RoundProgress(rounds=4)  # `flwr run .`, a deployment: no raw lines in their consoles and logs
        quiet.start(1, 3)
        quiet.client_done()
        quiet.end()
    assert caplog.records == []


def test_run_log_never_keeps_an_update(tmp_path):
    restore = install_console(tmp_path)
    try:
        RoundProgress(rounds=2, enabled=True).start(1, 3)
        logging.getLogger("flwr").info("a line the log keeps")
    finally:
        restore()
    log = (tmp_path / RUN_LOG).read_text()
    assert "a line the log keeps" in log and PROGRESS_MARK not in log


def test_round_progress_logs_every_change(caplog):
    progress = RoundProgress(rounds=4, enabled=True)
    with caplog.at_level(logging.INFO, logger="flwr"):
        progress.start(1, 3)
        progress.client_done()
        progress.phase("noise floor")
        progress.end()
        progress.start(2, 3, counted=False)
    states = [decode(r.getMessage()) for r in caplog.records]
    assert all(getattr(r, PROGRESS_KEY) for r in caplog.records)
    assert [(s.round, s.phase, s.done) for s in states] == [
        (1, "training", 0),
        (1, "training", 1),
        (1, "noise floor", 1),
        (1, ENDED, 1),
        (2, "training", None),
    ]
    assert states[-1].expected is not None and states[0].expected is None  # the last round's time is the estimate
