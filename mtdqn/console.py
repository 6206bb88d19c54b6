"""The run's messages in its log file (Hydra's `<run>/train.log`) as well as on the console.

mtdqn prints its own messages (resume notes, the end-of-run summary) so that their console form stays plain, and
Lightning keeps its own console handler; neither would reach the log file Hydra opens for each job. `say` prints a
message and writes it to the root logger's file handlers (the job's `train.log`, one per job in a multirun too)
without showing it on the console twice; `to_log_file` writes to the file alone (each evaluation's line, which the
console shows in the progress bar). `log_to_file` (called once by train.py under Hydra) sends Python warnings and
Lightning's messages to the file too. Outside Hydra (tests, scripts) there is no file handler and nothing is written.
"""

from __future__ import annotations

import logging
import sys
import warnings

_FILE = logging.getLogger("mtdqn.file")  # records made here go to the root's file handlers only
_FILE.propagate = False


def _file_handlers() -> list[logging.FileHandler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def to_log_file(message: str, level: int = logging.INFO, name: str = "mtdqn") -> None:
    """Write `message` to the root logger's file handlers (Hydra's job log), not to the console."""
    handlers = _file_handlers()
    if not handlers:
        return
    record = _FILE.makeRecord(name, level, __file__, 0, message, None, None)
    for handler in handlers:
        if record.levelno >= handler.level:
            handler.handle(record)


def say(message: str, *, stderr: bool = False) -> None:
    """Print `message` (stdout, or stderr for a warning) and write it to the log file."""
    print(message, file=sys.stderr if stderr else sys.stdout, flush=True)
    to_log_file(message, logging.WARNING if stderr else logging.INFO)


class _ToLogFile(logging.Handler):
    """On a logger that does not propagate (Lightning's, with its own console handler): its records to the file."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        if not self.logger.propagate:  # a propagating logger reaches the file through the root already
            to_log_file(record.getMessage(), record.levelno, record.name)


def log_to_file() -> None:
    """Also write Python warnings and Lightning's messages to the log file; idempotent."""
    shown = warnings.showwarning
    if not getattr(shown, "mtdqn_to_file", False):
        def showwarning(message, category, filename, lineno, file=None, line=None):
            shown(message, category, filename, lineno, file, line)
            text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
            to_log_file(text, logging.WARNING, "py.warnings")

        showwarning.mtdqn_to_file = True
        warnings.showwarning = showwarning
    for name in ("pytorch_lightning", "lightning_fabric"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _ToLogFile) for h in logger.handlers):
            logger.addHandler(_ToLogFile(logger))
