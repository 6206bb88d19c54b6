"""What a resumed run records: its time measures go on from the checkpoint, an evaluation already logged is not
logged again, and a checkpoint write a kill cut short leaves no temporary file for good."""

import json
import os
from pathlib import Path

import pytest
import torch

from mtdqn.callbacks.checkpoint import atomic_torch_save
from mtdqn.train import train
from tests.helpers.config import compose_cfg

RUN = ["debug=smoke", "logger=jsonl", "print_config=false", "data.total_env_steps=600"]
EARLIER_TRAIN, EARLIER_JSONL = 500.0, 1000.0  # seconds a checkpoint is made to say its attempts took


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def eval_rows(run_dir: Path) -> list[dict]:
    return [r for r in rows(run_dir) if "eval/CartPole-v1/return" in r]


def set_clocks(ckpt: Path) -> dict:
    """Make the checkpoint's attempts look long (EARLIER_*): a resumed run that restarted its clocks at 0 (a few
    seconds in) cannot pass for one that goes on from them. Returns the saved values it replaced."""
    state = torch.load(ckpt, weights_only=True)
    saved = {"train": state["callbacks"]["EvalCallback"]["train_seconds"],
             "jsonl": state["callbacks"]["LoggerClock"]["jsonl_seconds"]}
    state["callbacks"]["EvalCallback"]["train_seconds"] = EARLIER_TRAIN
    state["callbacks"]["LoggerClock"]["jsonl_seconds"] = EARLIER_JSONL
    torch.save(state, ckpt)
    return saved


@pytest.mark.parametrize("folder", ["own", "new"])
def test_a_resumed_run_counts_its_time_on_from_the_checkpoint(tmp_path, folder):
    """time/train_seconds (compare.py's "train min", bench_mtl) and metrics.jsonl's `time` restarted at 0 on every
    resume, so a resumed run looked faster than it was. They go on from the checkpoint's, in the run's own folder
    (ckpt_path=auto) and in another (a continuation of the same training); time/sps stays this attempt's rate."""
    first = train(compose_cfg(RUN, tmp_path))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    saved = set_clocks(ckpt)
    # the checkpoint holds the clocks as they were when it was written, after the final evaluation
    assert first["time/train_seconds"] <= saved["train"] <= saved["jsonl"] + 1e-6
    assert saved["jsonl"] >= max(r["time"] for r in rows(tmp_path))
    out = tmp_path if folder == "own" else tmp_path / "elsewhere"
    resume = ["ckpt_path=auto"] if folder == "own" else [f"ckpt_path={ckpt}"]
    summary = train(compose_cfg([*RUN, "data.total_env_steps=1200", *resume], out))
    assert summary["status"] == "completed" and summary["time/env_steps"] == 1200
    resumed = [r for r in rows(out) if r["env_steps"] > 600]
    assert resumed and all(r["time"] >= EARLIER_JSONL for r in resumed)
    evals = [r for r in resumed if "time/train_seconds" in r]
    assert [r["env_steps"] for r in evals] == [900, 1200]
    assert all(EARLIER_TRAIN < r["time/train_seconds"] < EARLIER_TRAIN + 120 for r in evals)
    assert summary["time/train_seconds"] == evals[-1]["time/train_seconds"]
    # this attempt's 600 env steps over its own seconds, not over the earlier attempts' 500 s too
    assert summary["time/sps"] > 600 / 120


def test_a_resume_at_the_env_steps_last_evaluated_does_not_log_that_evaluation_again(tmp_path, capsys):
    """A run killed in its end-of-run work (compression) after the final evaluation and checkpoint, resumed by
    ckpt_path=auto, and a completed checkpoint resumed with a budget at or below its env steps, evaluated and
    logged the checkpoint's env steps a second time (the callback's evaluation history started empty). The
    evaluation comes from the checkpoint instead: one row per evaluated env step, the summary as before, and the
    closing line says the end of the run was what was left, not only to raise the budget."""
    first = train(compose_cfg([*RUN, "callbacks.progress=null"], tmp_path))
    logged = eval_rows(tmp_path)
    assert [r["env_steps"] for r in logged] == [300, 600]
    (tmp_path / "summary.json").unlink()  # as a SIGKILL in the compression leaves the folder: no completed summary
    again = train(compose_cfg([*RUN, "ckpt_path=auto"], tmp_path))
    out = capsys.readouterr().out
    assert "resuming from" in out
    assert eval_rows(tmp_path) == logged
    assert again["status"] == "completed"
    assert {k: v for k, v in again.items() if k.startswith("eval/")} == \
        {k: v for k, v in first.items() if k.startswith("eval/")}
    assert "(0 this run)" in out
    assert "already at the budget, data.total_env_steps=600: nothing to train, only the end of the run" in out
    assert "raise it to train on" not in out
    # a budget below the checkpoint's env steps, into another folder: nothing evaluated there either
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    below = train(compose_cfg([*RUN, "callbacks.progress=null", "data.total_env_steps=300", f"ckpt_path={ckpt}"],
                              tmp_path / "below"))
    assert below["eval/CartPole-v1/return"] == first["eval/CartPole-v1/return"]
    assert not eval_rows(tmp_path / "below")


def _stale(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).write_bytes(b"half a checkpoint")


def test_a_successful_save_removes_the_temporary_files_earlier_writes_of_it_left(tmp_path):
    """A kill mid-write (SIGKILL, an out-of-memory kill) leaves `.<name>.<random>.tmp`, the replay's size, which
    nothing removed; the next save of the same file that succeeds does. Other checkpoints' temporaries (a rank's
    `last.rank1.ckpt`) and files of other patterns stay."""
    mine = [".last.ckpt.k3x_0q9a.tmp", ".last.ckpt.abcdefgh.tmp"]
    others = [".last.rank1.ckpt.abcdefgh.tmp", ".last.ckpt.notes.tmp", ".last.ckpt.abcdefgh.tmp.bak",
              "last.ckpt.abcdefgh.tmp", ".other.ckpt.abcdefgh.tmp", ".last.ckpt.ABCDEFGH.tmp"]
    _stale(tmp_path, mine + others)
    atomic_torch_save({"x": torch.ones(3)}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, "last.ckpt"])
    atomic_torch_save({"x": torch.ones(3)}, tmp_path / "last.rank1.ckpt")  # a rank's own file: its own leftovers
    assert ".last.rank1.ckpt.abcdefgh.tmp" not in {p.name for p in tmp_path.iterdir()}
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["x"].sum() == 3


def test_a_run_removes_the_temporary_checkpoint_a_killed_attempt_left(tmp_path):
    """The same through a run: a resume's first checkpoint removes the killed attempt's temporary file."""
    train(compose_cfg(RUN, tmp_path))
    folder = tmp_path / "checkpoints"
    _stale(folder, [".last.ckpt.zz9_zz9z.tmp"])
    train(compose_cfg([*RUN, "data.total_env_steps=900", "ckpt_path=auto"], tmp_path))
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files in /proc")
@pytest.mark.parametrize("where", ["umask", "chmod", "save", "fsync", "replace"])
def test_a_write_interrupted_anywhere_after_the_temporary_file_is_made_leaves_nothing(tmp_path, monkeypatch,
                                                                                      where):
    """Ctrl-C (or any error) at any step after mkstemp removes the temporary file and closes it: one landing
    between mkstemp and the cleanup's `try` (the umask and chmod calls stood there) left a 0-byte file."""
    import mtdqn.callbacks.checkpoint as checkpoint

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    atomic_torch_save({"x": 1}, tmp_path / "last.ckpt")  # the previous checkpoint, which must stay whole
    fds = _open_fds()
    target = {"umask": (os, "umask"), "chmod": (os, "chmod"), "save": (checkpoint.torch, "save"),
              "fsync": (os, "fsync"), "replace": (os, "replace")}[where]
    monkeypatch.setattr(*target, stop)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"x": 2}, tmp_path / "last.ckpt")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"x": 1}
    assert _open_fds() == fds
