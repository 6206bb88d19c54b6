"""mtdqn.console: printed messages, warnings and Lightning's records reach the job's log file once."""

import logging
import warnings

import pytest
import pytorch_lightning  # noqa: F401  (sets its logger up: INFO, its own console handler)

from mtdqn.console import log_to_file, say, to_log_file


@pytest.fixture
def log_file(tmp_path):
    """A file handler on the root logger, as Hydra's job logging sets one up (`<run>/train.log`)."""
    path = tmp_path / "train.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    yield path
    root.removeHandler(handler)
    handler.close()


def test_say_prints_once_and_writes_the_log_file(log_file, capsys):
    say("mtdqn: resuming from x")
    say("mtdqn: left as it was", stderr=True)
    out, err = capsys.readouterr()
    assert out == "mtdqn: resuming from x\n" and err == "mtdqn: left as it was\n"
    assert log_file.read_text().splitlines() == ["[mtdqn][INFO] - mtdqn: resuming from x",
                                                 "[mtdqn][WARNING] - mtdqn: left as it was"]


def test_without_a_file_handler_nothing_is_written(tmp_path, capsys):
    to_log_file("nowhere")  # outside Hydra: no file, no console output, no error
    assert capsys.readouterr() == ("", "")


def test_warnings_and_lightnings_messages_reach_the_file_once(log_file, monkeypatch):
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    pl_logger = logging.getLogger("pytorch_lightning")
    monkeypatch.setattr(pl_logger, "propagate", False)  # as Lightning sets it when imported before Hydra's logging
    monkeypatch.setattr(pl_logger, "handlers", list(pl_logger.handlers))
    log_to_file()
    log_to_file()  # idempotent: one record each below
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("replay smaller than expected", UserWarning, stacklevel=1)
    logging.getLogger("pytorch_lightning.utilities.rank_zero").info("GPU available: False, used: False")
    lines = log_file.read_text().splitlines()
    assert sum("UserWarning: replay smaller than expected" in x for x in lines) == 1
    assert lines.count("[pytorch_lightning.utilities.rank_zero][INFO] - GPU available: False, used: False") == 1
    pl_logger.propagate = True  # a propagating logger reaches the file through the root: still once
    logging.getLogger("pytorch_lightning.utilities.rank_zero").info("TPU available")
    assert log_file.read_text().count("TPU available") == 1
