"""The quiet console: fedmi's lines on it, one line per warning, Flower's chatter and tracebacks in run.log only."""

from __future__ import annotations

import io
from logging import DEBUG, ERROR, INFO, WARNING

from flwr.common.logger import FLOWER_LOGGER, console_handler, update_console_handler

from fedmi_flower.apps.console import RUN_LOG, run_console
from fedmi_flower.strategies import CONSOLE_KEY


def _log_a_round(engine_path: str) -> None:
    FLOWER_LOGGER.log(INFO, "configure_fit: strategy sampled 3 clients (out of 3)")
    FLOWER_LOGGER.log(INFO, "[round 1/1] 3/3 clients | acc 0.5", extra={CONSOLE_KEY: True})
    FLOWER_LOGGER.log(WARNING, "DEPRECATED FEATURE: something\n\n    It will be removed")
    # What Flower's simulation engine logs for a client's exception (the strategy names the failure itself).
    record = FLOWER_LOGGER.makeRecord(
        FLOWER_LOGGER.name, ERROR, engine_path, 140, "Traceback (most recent call last):\n  ...", (), None, "worker"
    )
    FLOWER_LOGGER.handle(record)
    FLOWER_LOGGER.log(ERROR, "ServerApp raised an exception")


def test_quiet_console_shows_fedmi_lines_and_one_line_per_warning_and_the_log_keeps_everything(tmp_path):
    screen = io.StringIO()
    old_stream = console_handler.setStream(screen)
    handlers_before = list(FLOWER_LOGGER.handlers)
    try:
        with run_console(tmp_path / "run") as log_path:
            _log_a_round("/x/flwr/server/superlink/fleet/vce/vce_api.py")
    finally:
        console_handler.setStream(old_stream)
    assert FLOWER_LOGGER.handlers == handlers_before  # everything put back
    assert log_path == tmp_path / "run" / RUN_LOG
    assert screen.getvalue().splitlines() == [
        "[round 1/1] 3/3 clients | acc 0.5",
        f"WARNING: DEPRECATED FEATURE: something (more in {log_path})",
        "ERROR: ServerApp raised an exception",
    ]
    log = log_path.read_text()
    for text in ("configure_fit", "[round 1/1]", "It will be removed", "Traceback (most recent call last)"):
        assert text in log
    assert "\x1b[" not in log and "\x1b[" not in screen.getvalue()


def test_verbose_console_keeps_flowers_lines_without_colour_codes_off_a_terminal(tmp_path):
    screen = io.StringIO()
    old_stream = console_handler.setStream(screen)
    before = (console_handler.level, console_handler.colored, console_handler.timestamps)
    try:
        with run_console(tmp_path / "run", verbose=True):
            # What Flower's simulation does with verbose_logging: debug level, timestamps, colour forced on.
            update_console_handler(level=DEBUG, timestamps=True, colored=True)
            _log_a_round("/x/flwr/server/superlink/fleet/vce/vce_api.py")
    finally:
        console_handler.setStream(old_stream)
    shown = screen.getvalue()
    assert "configure_fit" in shown and "Traceback (most recent call last)" in shown and "\x1b[" not in shown
    assert (console_handler.level, console_handler.colored, console_handler.timestamps) == before  # put back


def test_the_engines_own_errors_reach_the_quiet_console_and_a_clients_exception_does_not(tmp_path):
    screen = io.StringIO()
    old_stream = console_handler.setStream(screen)
    engine = "/x/flwr/server/superlink/fleet/vce/vce_api.py"
    try:
        with run_console(tmp_path / "run"):
            for function, message in (("worker", "client failed"), ("start_and_shutdown", "Ray could not start")):
                record = FLOWER_LOGGER.makeRecord(FLOWER_LOGGER.name, ERROR, engine, 1, message, (), None, function)
                FLOWER_LOGGER.handle(record)
    finally:
        console_handler.setStream(old_stream)
    assert screen.getvalue().splitlines() == ["ERROR: Ray could not start"]
