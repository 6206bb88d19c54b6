"""Multi-process tests: a 2-process CPU DDP run and a SIGKILL in the middle of training."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtdqn import resume
from mtdqn.callbacks import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BASE = ["debug=smoke", "logger=jsonl", "callbacks.progress=null"]


def run_train(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def kill_after_checkpoints(args: list[str], ckpt: Path, sig: int = signal.SIGKILL) -> int:
    """Start `train.py args`, wait for its first checkpoint, let it overwrite it a few more times, then send `sig`
    (kill -9 by default) to it; returns its exit status."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    # SIGINT as in a terminal: a shell's background job (`cmd &`, as CI may run the tests) starts with it ignored,
    # and a Python started so never turns it into KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ckpt.exists():
            time.sleep(0.2)
        assert ckpt.exists(), "no checkpoint was written"
        time.sleep(1.5)  # let it overwrite last.ckpt a few more times
    finally:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=60)
    return proc.returncode


@pytest.mark.slow
def test_ddp_two_cpu_processes_all_reduce_and_use_distinct_seeds(tmp_path):
    probe = tmp_path / "probe"
    res = run_train([
        *BASE, "trainer=ddp", "trainer.devices=2", f"hydra.run.dir={tmp_path / 'run'}",
        "+callbacks.probe._target_=tests.helpers.rank_probe.RankProbe", f"+callbacks.probe.dirpath={probe}",
    ])
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = torch.load(probe / "rank0.pt"), torch.load(probe / "rank1.pt")
    assert r0["world_size"] == 2
    # different data on each rank, yet identical weights: gradients were all-reduced every update
    assert r0["collector_seed"] != r1["collector_seed"]
    assert not torch.equal(r0["first_obs"], r1["first_obs"])
    assert torch.equal(r0["params"], r1["params"])
    assert r0["env_steps"] == r1["env_steps"] == 600


@pytest.mark.slow
def test_sigkill_mid_training_resumes_from_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    args = [*BASE, "data.total_env_steps=1000000", "callbacks.checkpoint.every_env_steps=500",
            "callbacks.eval.every_env_steps=100000", f"hydra.run.dir={run_dir}"]
    assert kill_after_checkpoints(args, ckpt) == -signal.SIGKILL
    state = load_checkpoint(ckpt)  # loads weights-only: never half-written
    saved_steps = state["RLDataModule"]["env_steps"]
    assert saved_steps >= 500 and saved_steps % 100 == 0

    resume_dir = tmp_path / "resumed"
    res = run_train([*BASE, f"data.total_env_steps={saved_steps + 400}", f"ckpt_path={ckpt}",
                     f"hydra.run.dir={resume_dir}"])
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(x) for x in (resume_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/td_loss" in r]
    assert train_rows[0]["env_steps"] == saved_steps + 100  # continued from the saved env step
    assert train_rows[0]["step"] > state["global_step"]
    resumed = load_checkpoint(resume_dir / "checkpoints" / "last.ckpt")
    old_replay, new_replay = state["RLDataModule"]["replays"][0], resumed["RLDataModule"]["replays"][0]
    n_old = old_replay["size"]
    assert new_replay["size"] == n_old + 400
    assert torch.equal(new_replay["obs"][:n_old], old_replay["obs"][:n_old])  # the saved buffer was restored
    assert json.loads((resume_dir / "summary.json").read_text())["status"] == "completed"


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Path("x")}, path)  # a pickled non-tensor object
    with pytest.raises(ValueError, match="weights-only"):
        load_checkpoint(path)
    text = tmp_path / "notes.txt"  # not written by torch.save: said so, not blamed on pickled objects
    text.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="is not a checkpoint that torch can load"):
        load_checkpoint(text)


@pytest.mark.slow
def test_ddp_run_resumes_from_its_checkpoint(tmp_path):
    first = tmp_path / "first"
    res = run_train([*BASE, "trainer=ddp", "trainer.devices=2", "data.total_env_steps=400", f"hydra.run.dir={first}"])
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = first / "checkpoints" / "last.ckpt"
    saved = load_checkpoint(ckpt)
    assert saved["RLDataModule"]["env_steps"] == 400
    probe = tmp_path / "probe"
    res = run_train([*BASE, "trainer=ddp", "trainer.devices=2", "data.total_env_steps=800", f"ckpt_path={ckpt}",
                     f"hydra.run.dir={tmp_path / 'second'}",
                     "+callbacks.probe._target_=tests.helpers.rank_probe.RankProbe", f"+callbacks.probe.dirpath={probe}"])
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = torch.load(probe / "rank0.pt"), torch.load(probe / "rank1.pt")
    assert r0["env_steps"] == r1["env_steps"] == 800  # both ranks continued from 400 and stopped together
    assert torch.equal(r0["params"], r1["params"])
    rows = [json.loads(x) for x in (tmp_path / "second" / "metrics.jsonl").read_text().splitlines()]
    assert min(r["env_steps"] for r in rows if "train/td_loss" in r) > 400
    # each rank resumed its own replay and env seeds (Lightning's checkpoint holds rank 0's: rank 1 resumed as its
    # copy, collecting the same episodes and drawing the same minibatches)
    side = load_checkpoint(first / "checkpoints" / "last.rank1.ckpt")
    assert side["env_steps"] == 400 and side["data"]["collector_seeds"] != saved["RLDataModule"]["collector_seeds"]
    assert not torch.equal(r0["first_obs"], r1["first_obs"]) and r0["collector_seed"] != r1["collector_seed"]
    (first / "checkpoints" / "last.rank1.ckpt").unlink()  # a checkpoint without it: refused, not a copy of rank 0
    res = run_train([*BASE, "trainer=ddp", "trainer.devices=2", "data.total_env_steps=800", f"ckpt_path={ckpt}",
                     f"hydra.run.dir={tmp_path / 'third'}"])
    assert res.returncode != 0 and "no last.rank1.ckpt beside it" in res.stderr


@pytest.mark.slow
def test_ddp_spawn_inside_a_multirun_trains_both_ranks_and_summarizes_the_workers_run(tmp_path):
    """trainer=ddp_spawn, the README's DDP inside a Hydra multirun: the spawned workers train in step (all-reduced
    weights), summary.json holds the workers' counters and final evaluation (the launching process's callbacks never
    see the fit: it read 0 updates and no evaluation), and the workers print none of the notices build() silences."""
    probe = tmp_path / "probe"
    res = run_train(["-m", *BASE, "seed=0", "trainer=ddp_spawn", "trainer.devices=2", "print_config=false",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}", "torch_threads=2",
                     "+callbacks.probe._target_=tests.helpers.rank_probe.RankProbe", f"+callbacks.probe.dirpath={probe}"])
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = torch.load(probe / "rank0.pt"), torch.load(probe / "rank1.pt")
    assert r0["world_size"] == 2 and r0["collector_seed"] != r1["collector_seed"]
    assert torch.equal(r0["params"], r1["params"])
    # the workers train with torch_threads and flush denormals (Lightning set cpu_count / 2 threads, and spawned
    # workers started without the flush)
    assert r0["threads"] == r1["threads"] == 2 and r0["flushes_denormals"] and r1["flushes_denormals"]
    job = tmp_path / "sweep" / "0"
    summary = json.loads((job / "summary.json").read_text())
    rows = [json.loads(x) for x in (job / "metrics.jsonl").read_text().splitlines()]
    last_eval = [r for r in rows if "eval/CartPole-v1/return" in r][-1]
    assert summary["status"] == "completed"
    assert summary["time/updates"] == max(r["step"] for r in rows) > 0
    assert summary["time/env_steps"] == r0["env_steps"] == 600
    assert summary["eval/CartPole-v1/return"] == last_eval["eval/CartPole-v1/return"]
    for notice in ("dataloader_iter", "LeafSpec"):
        assert notice not in res.stdout + res.stderr, notice


@pytest.mark.slow
def test_a_run_killed_and_relaunched_with_ckpt_path_auto_continues_in_its_folder(tmp_path):
    """kill -9, then the same command (ckpt_path=auto, same folder: a requeued SLURM job): training continues from
    the folder's last checkpoint, and metrics.jsonl holds every env step once (rows logged after that checkpoint
    were dropped before the resumed run logged them again)."""
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    args = [*BASE, "callbacks.checkpoint.every_env_steps=500", "callbacks.eval.every_env_steps=1000",
            f"hydra.run.dir={run_dir}", "ckpt_path=auto"]
    assert kill_after_checkpoints([*args, "data.total_env_steps=1000000"], ckpt) == -signal.SIGKILL
    saved = load_checkpoint(ckpt)["RLDataModule"]["env_steps"]
    res = run_train([*args, f"data.total_env_steps={saved + 400}"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming from {ckpt} ({saved:,} env steps" in res.stdout
    # the job's train.log (Hydra's, appended by both attempts) has the resume note, each evaluation and
    # Lightning's messages, which it logs with its own handler
    logged = (run_dir / "train.log").read_text()
    assert f"resuming from {ckpt} ({saved:,} env steps" in logged and "GPU available" in logged
    assert f"eval at {saved + 400:,} env steps" in logged and "CartPole-v1 " in logged
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["env_steps"] for r in rows if "train/td_loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == saved + 400 and saved + 100 in steps
    evals = [r["env_steps"] for r in rows if "eval/CartPole-v1/return" in r]
    assert evals == sorted(set(evals))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_ctrl_c_records_the_run_as_interrupted_and_compare_keeps_its_curve(tmp_path):
    """Ctrl-C (SIGINT to the process group) mid-training: Lightning shuts down and exits 1, summary.json says
    interrupted, not failed, and compare.py uses the run's curve so far as an incomplete run instead of skipping it."""
    from mtdqn.evaluation.compare import compare_runs

    run_dir = tmp_path / "run"
    args = [*BASE, "data.total_env_steps=1000000", "callbacks.checkpoint.every_env_steps=500",
            "callbacks.eval.every_env_steps=500", f"hydra.run.dir={run_dir}"]
    assert kill_after_checkpoints(args, run_dir / "checkpoints" / "last.ckpt", signal.SIGINT) == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"  # error: SystemExit: 1, or the zip writer's error if inside torch.save
    report = compare_runs([run_dir], metric=None, n_boot=50).summary
    assert report["failed"] == [] and report["incomplete"] == [str(run_dir)]


@pytest.mark.slow
def test_sigterm_mid_training_exits_143_with_the_run_interrupted(tmp_path):
    """kill / scancel: Lightning stops the fit after the current round with a SystemExit that has no code; train.py
    exits 143 (128 + SIGTERM), not 0 as if it had completed, and summary.json says interrupted."""
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    args = [*BASE, "data.total_env_steps=1000000", "callbacks.checkpoint.every_env_steps=3000",
            "callbacks.eval.every_env_steps=700", f"hydra.run.dir={run_dir}"]
    assert kill_after_checkpoints(args, ckpt, signal.SIGTERM) == 143
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["error"] == "SIGTERMException"
    steps = int(summary["time/env_steps"])
    assert steps > 0
    # the stop comes at the end of a round: its state is saved (the rounds since the last periodic checkpoint were
    # lost to the resume), and the summary's time measures are the stop's (they were the last evaluation's)
    assert resume.checkpoint_env_steps(ckpt) == steps
    assert summary["time/sps"] == pytest.approx(steps / summary["time/train_seconds"])
    assert (f"mtdqn: interrupted at {steps:,} env steps (SIGTERMException); its last checkpoint is at {steps:,} env "
            "steps") in (run_dir / "train.log").read_text()
