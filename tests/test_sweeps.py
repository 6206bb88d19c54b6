"""Hydra multiruns: parallel joblib jobs, one W&B run per job, failed jobs recorded while the sweep goes on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_joblib_multirun_gives_one_run_dir_and_wandb_run_per_job_and_survives_a_failure(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    res = subprocess.run(
        [sys.executable, "train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "debug=smoke",
         "callbacks.progress=null", "seed=0,1", "gamma=0.99,1.5", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"mtdqn: 2 of 4 jobs failed (jobs 1, 3); {tmp_path / 'sweep'}" in res.stderr  # a tally, not an error
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    status = {p.name: json.loads((p / "summary.json").read_text()) for p in jobs}
    assert [status[k]["status"] for k in "0123"] == ["completed", "failed", "completed", "failed"]
    assert "gamma=1.5" in status["1"]["error"]
    runs = [next((p / "wandb").glob("offline-run-*")).name for p in (jobs[0], jobs[2])]
    assert runs[0] != runs[1]  # one W&B run per job, each finished in its own folder
    assert all((p / "metrics.jsonl").is_file() for p in (jobs[0], jobs[2]))


@pytest.mark.slow
def test_a_joblib_sweep_killed_stops_its_jobs_as_interrupted(tmp_path):
    """`kill <sweep>`: the joblib workers, orphaned, trained on to their budgets (here 10M env steps); now each
    notices within seconds, stops after its current round and records the job as interrupted."""
    import contextlib
    import signal
    import time

    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "debug=smoke",
         "logger=jsonl", "print_config=false", "callbacks.progress=null", "data.total_env_steps=10000000",
         "model.loss=huber", "model.max_grad_norm=10", "callbacks.checkpoint.every_env_steps=500", "seed=0,1",
         f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = [sweep / job / "checkpoints" / "last.ckpt" for job in "01"]
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not all(c.exists() for c in checkpoints):
            time.sleep(0.2)
        assert all(c.exists() for c in checkpoints), "the jobs wrote no checkpoint"
        proc.send_signal(signal.SIGTERM)  # the sweep's process only, as `kill <pid>` does
        proc.wait(timeout=30)
        summaries = [sweep / job / "summary.json" for job in "01"]
        deadline = time.time() + 60
        ended = lambda: all(p.exists() and json.loads(p.read_text())["status"] != "running"  # noqa: E731
                            for p in summaries)  # "running" from the fit's start until the job records its end
        while time.time() < deadline and not ended():
            time.sleep(0.2)
        done = [json.loads(p.read_text()) for p in summaries]
        assert [d["status"] for d in done] == ["interrupted", "interrupted"], done
        assert all(d["time/env_steps"] < 1_000_000 for d in done)
        # and the orphaned workers end: they waited for work that never came, holding ~0.5 GB each, for minutes
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                os.killpg(proc.pid, 0)  # a process of the sweep's group is left
            except ProcessLookupError:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the sweep's workers outlived it by 30 s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the idle workers left, if any


def compose_with_hydra(overrides: list[str]):
    """The train config with its `hydra` node (launcher, sweeper), composed without running anything."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_preset_resolves_without_submitting(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the optional extra .[slurm]")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
                              f"hydra.sweep.dir={tmp_path}", "trainer=gpu"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["partition"], launcher["timeout_min"], launcher["gpus_per_node"]) == ("gpu", 90, 1)
    assert launcher["tasks_per_node"] == 1 and launcher["cpus_per_task"] == 8 and launcher["max_num_timeout"] == 0
    assert launcher["submitit_folder"] == f"{tmp_path}/.submitit/%j"
    instantiate(cfg.hydra.launcher)  # the plugin accepts every key (construction submits nothing)
    assert not (tmp_path / ".submitit").exists()


def test_optuna_preset_composes_search_space_and_trial_settings():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the optional extra .[optuna]")
    cfg = compose_with_hydra(["+experiment=lane_keep_dqn", "hparams_search=lane_keep_optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.sampler._target_.endswith("TPESampler") and sweeper.max_failure_rate == 1.0
    assert set(sweeper.params) == {"optimizer.lr", "data.batch_size", "model.target_update_period", "replay.n_step"}
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and sweeper.study_name == "lane_keep_dqn"
    assert cfg.hparams_search.seeds_per_trial == 3 and cfg.hparams_search.metric == "eval/mean_normalized"
    assert cfg.data.batch_size == 128  # the experiment's values stay the base of every trial


def test_run_trial_averages_its_seeds_and_a_failed_seed_fails_the_trial(tmp_path):
    from omegaconf import OmegaConf

    from mtdqn.sweep import job_statuses, run_trial

    cfg = OmegaConf.create({"seed": 3, "paths": {"output_dir": str(tmp_path / "trial")},
                            "hparams_search": {"metric": "eval/mean_normalized", "seeds_per_trial": 3}})
    seen = []

    def fake_train(run):
        seen.append((run.seed, run.paths.output_dir))
        return {"status": "completed", "eval/mean_normalized": float(run.seed)}

    assert run_trial(cfg, fake_train) == 4.0  # mean of seeds 3, 4, 5
    assert seen == [(s, str(tmp_path / "trial" / f"seed_{s}")) for s in (3, 4, 5)]
    record = json.loads((tmp_path / "trial" / "trial.json").read_text())
    assert record["status"] == "completed" and record["values"] == {"3": 3.0, "4": 4.0, "5": 5.0}
    # a relaunched study refused in this folder before training (other sampled values): the completed trial and
    # its runs stay on record (trial.json was overwritten as failed while the seeds' runs were still completed)
    (tmp_path / "trial" / "seed_3").mkdir()
    (tmp_path / "trial" / "seed_3" / "summary.json").write_text(json.dumps({"status": "completed"}))

    def refused(run):
        raise ValueError("ckpt_path=auto: ... holds a run of other settings (data.batch_size: 64 there, 256 here)")

    assert run_trial(cfg, refused) is None
    assert json.loads((tmp_path / "trial" / "trial.json").read_text()) == record
    # ... and the study's tally counts it (refused.json), until an attempt records a trial there again
    assert "64 there, 256 here" in json.loads((tmp_path / "trial" / "refused.json").read_text())["error"]
    assert job_statuses(tmp_path) == {str(tmp_path / "trial"): "refused"}  # not its seed's, nor "completed"

    ran = []

    def failing_second_seed(run):
        ran.append(run.seed)
        if run.seed == 4:
            raise ValueError("gamma=1.5 must lie in (0, 1]")
        return {"eval/mean_normalized": 1.0}

    assert run_trial(cfg, failing_second_seed) is None
    assert ran == [3, 4]  # the trial stops at its first failed seed: seed 5 never trains
    record = json.loads((tmp_path / "trial" / "trial.json").read_text())
    assert record["status"] == "failed" and "seed 4: ValueError: gamma=1.5" in record["error"]
    assert record["values"] == {"3": 1.0}
    assert not (tmp_path / "trial" / "refused.json").exists()
    assert run_trial(cfg, lambda run: {"eval/mean_normalized": float("nan")}) is None  # never NaN to Optuna
    assert "is nan" in json.loads((tmp_path / "trial" / "trial.json").read_text())["error"]
    assert run_trial(cfg, lambda run: {"eval/CartPole-v1/return": 9.0}) is None
    assert "eval/CartPole-v1/return" in json.loads((tmp_path / "trial" / "trial.json").read_text())["error"]


def test_a_search_metric_the_runs_will_not_have_is_refused_before_training(tmp_path):
    """hparams_search.metric=eval/nonexistent was found after each trial had trained a seed: the names a run's
    summary.json has under eval/ follow from the task set (a normalized score only where a task has one)."""
    from mtdqn.sweep import check_metric, run_trial

    lane = compose_with_hydra(["+experiment=lane_keep_dqn", "hparams_search=lane_keep_optuna"])
    check_metric(lane)  # the preset's eval/mean_normalized
    for ok in ("eval/lane_keep/return", "eval/lane_keep/normalized", "eval/min_normalized",
               "eval/lane_keep/collision_rate", "time/env_steps"):  # not eval/: looked up after the run
        lane.hparams_search.metric = ok
        check_metric(lane)
    lane.hparams_search.metric = "eval/nonexistent"
    with pytest.raises(ValueError, match=r"hparams_search.metric='eval/nonexistent' is not a key of the runs' "
                                         r"summary.json; for task_set.tasks=\['lane_keep'\] it has eval/mean_normalized, "
                                         r"eval/min_normalized, eval/lane_keep/return, eval/lane_keep/normalized \(and per"):
        check_metric(lane)
    cartpole = compose_with_hydra(["hparams_search=lane_keep_optuna"])  # no reference scores: no normalized
    with pytest.raises(ValueError, match=r"'eval/mean_normalized' .* it has eval/CartPole-v1/return \(and per"):
        check_metric(cartpole)
    cartpole.paths.output_dir = str(tmp_path / "trial")
    trained = []
    assert run_trial(cartpole, trained.append) is None and not trained  # a failed trial, no seed trained
    assert "eval/CartPole-v1/return" in json.loads((tmp_path / "trial" / "trial.json").read_text())["error"]
    # the study: one line before any trial is launched
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the optional extra .[optuna]")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    res = subprocess.run(
        [sys.executable, "train.py", "-m", "+experiment=lane_keep_dqn", "hparams_search=lane_keep_optuna",
         "debug=smoke", "hparams_search.metric=eval/nonexistent", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith(
        "mtdqn: error: hparams_search.metric='eval/nonexistent' is not a key of the runs' summary.json")
    assert not (tmp_path / "sweep" / "0").exists()


def test_a_smoke_search_trains_every_batch_size_the_preset_draws(tmp_path):
    """`hparams_search=lane_keep_optuna debug=smoke`: a drawn data.batch_size=256 was larger than smoke's warm-up
    (data.learning_starts=200) and those trials failed by design; smoke's warm-up is now at least one minibatch."""
    from mtdqn.train import build
    from tests.helpers.config import compose_cfg

    cfg = compose_cfg(["+experiment=lane_keep_dqn", "hparams_search=lane_keep_optuna", "debug=smoke"], tmp_path)
    assert cfg.data.learning_starts == 200 and cfg.data.batch_size == 32  # smoke's own
    for drawn in (64, 128, 256):  # the preset's choices, as the sweeper overrides them
        cfg = compose_cfg(["+experiment=lane_keep_dqn", "hparams_search=lane_keep_optuna", "debug=smoke",
                           f"data.batch_size={drawn}"], tmp_path)
        assert cfg.data.learning_starts == max(200, drawn)
        build(cfg)  # refused ("larger than the warm-up data.learning_starts=200") before
    cfg = compose_cfg(["debug=smoke", "data.batch_size=256", "data.learning_starts=300"], tmp_path)
    assert cfg.data.learning_starts == 300  # key=value wins over the debug preset
    cfg = compose_cfg(["debug=smoke", "data.batch_size=abc"], tmp_path)
    with pytest.raises(ValueError, match="data.batch_size"):  # validation's message, not a resolver's error
        build(cfg)


def test_a_sweep_whose_every_job_failed_exits_with_status_1(tmp_path):
    """Each failed job is recorded and the sweep goes on; when none trained, the sweep says so and exits 1 (it
    exited 0, and a pipeline running it could not tell)."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    res = subprocess.run(
        [sys.executable, "train.py", "-m", "debug=smoke", "logger=jsonl", "callbacks.progress=null",
         "print_config=false", "seed=0,1", "gamma=1.5", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 1, res.stderr[-3000:]
    assert f"mtdqn: every job of the sweep failed (2 of 2); {tmp_path / 'sweep'}" in res.stderr


def test_jobs_refused_on_a_relaunch_count_in_the_tally(tmp_path):
    """A relaunch into a sweep's folder with other settings is refused job by job before training, and each job's
    folder keeps its completed summary.json: the tally did not count them and the sweep exited 0 when every job was
    refused. refused.json in the job folder says so, for this multirun only."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    sweep = tmp_path / "sweep"

    def multirun(*overrides):
        return subprocess.run(
            [sys.executable, "train.py", "-m", "debug=smoke", "logger=jsonl", "callbacks.progress=null",
             "print_config=false", *overrides, f"hydra.sweep.dir={sweep}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    assert multirun("seed=0,1").returncode == 0
    res = multirun("seed=0,1", "gamma=0.98")  # no ckpt_path=auto: each folder's metrics.jsonl refuses it
    assert res.returncode == 1, res.stderr[-3000:]
    assert "give another hydra.sweep.dir" in res.stdout + res.stderr  # a multirun's folders are named by hydra.sweep.dir
    assert f"mtdqn: every job of the sweep failed or was refused (2 of 2, 2 refused); {sweep}" in res.stderr
    assert all(json.loads((sweep / j / "summary.json").read_text())["status"] == "completed" for j in "01")
    res = multirun("seed=0,5", "ckpt_path=auto")  # job 0 is its folder's run; job 1 (seed 5) is refused there
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"mtdqn: 1 of 2 jobs failed or were refused (jobs 1; 1 refused); {sweep}" in res.stderr
    assert not (sweep / "0" / "refused.json").exists()  # the earlier multirun's refusal is not this one's
    assert "seed: 1 there, 5 here" in json.loads((sweep / "1" / "refused.json").read_text())["error"]


def test_an_optuna_study_whose_every_trial_failed_ends_in_one_line(tmp_path):
    """Optuna's sweeper asks for the best trial after the last one: with none completed that was Optuna's "No
    trials are completed yet." traceback; mtdqn's sweeper (hydra_plugins.mtdqn_sweepers) says what happened."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the optional extra .[optuna]")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    res = subprocess.run(
        [sys.executable, "train.py", "-m", "hparams_search=lane_keep_optuna", "debug=smoke", "logger=jsonl",
         "callbacks.progress=null", "print_config=false", "hparams_search.seeds_per_trial=1",
         "hydra.sweeper.n_trials=2", "gamma=1.5", "hparams_search.metric=eval/CartPole-v1/return",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.strip().splitlines()[-1].startswith(
        f"mtdqn: every trial of the study failed (2 of 2); {tmp_path / 'sweep'}: each trial's trial.json")


@pytest.mark.slow
def test_optuna_search_averages_seeds_per_trial_and_survives_a_failing_trial(tmp_path):
    """4 trials x 2 seeds at debug=smoke budgets; gamma=1.5 (an invalid value the sampler may pick) fails a trial."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the optional extra .[optuna]")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    res = subprocess.run(
        [sys.executable, "train.py", "-m", "hparams_search=lane_keep_optuna", "debug=smoke", "logger=jsonl",
         "callbacks.progress=null", "print_config=false", "hparams_search.seeds_per_trial=2",
         "hparams_search.metric=eval/CartPole-v1/return", "hydra.sweeper.n_trials=4",
         "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=1", "data.batch_size=choice(16,32)",
         "gamma=choice(0.99,1.5)", f"hydra.sweep.dir={tmp_path / 'sweep'}",
         f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}"],  # the documented storage (optuna 2 needs
        # SQLAlchemy 1.x: the optuna extra pins it)
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    trials = sorted((p for p in (tmp_path / "sweep").iterdir() if p.is_dir()), key=lambda p: int(p.name))
    assert [p.name for p in trials] == ["0", "1", "2", "3"]
    records = {p.name: json.loads((p / "trial.json").read_text()) for p in trials}
    status = [records[k]["status"] for k in "0123"]
    assert "failed" in status and "completed" in status, status  # seed=1 samples gamma=1.5 in some trials only
    for p in trials:
        record = records[p.name]
        if record["status"] == "failed":
            assert "gamma=1.5" in record["error"] and record["objective"] is None
            assert json.loads((p / "seed_0" / "summary.json").read_text())["status"] == "failed"
            assert not (p / "seed_1").exists()  # a failed seed ends the trial
            continue
        values = [json.loads((p / f"seed_{s}" / "summary.json").read_text())["eval/CartPole-v1/return"]
                  for s in (0, 1)]
        assert record["values"] == {"0": values[0], "1": values[1]}
        assert record["objective"] == pytest.approx(sum(values) / 2)
        assert all((p / f"seed_{s}" / "metrics.jsonl").is_file() for s in (0, 1))
    best = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "best_value" in best and "gamma: 0.99" in best
    assert (tmp_path / "study.db").stat().st_size > 0


@pytest.mark.slow
def test_an_optuna_study_is_continued_in_its_sweep_folder(tmp_path):
    """Hydra's sweeper numbered trial folders from 0 on every launch: a relaunch of a stored study into its sweep
    folder put its new trials in the earlier trials' folders (refused there, or mixed); an in-memory study cannot
    be continued, and a relaunch into its folder refused every trial."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the optional extra .[optuna]")
    import optuna

    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    sweep = tmp_path / "sweep"

    def launch(*overrides):
        return subprocess.run(
            [sys.executable, "train.py", "-m", "hparams_search=lane_keep_optuna", "debug=smoke", "logger=jsonl",
             "callbacks.progress=null", "print_config=false", "hparams_search.seeds_per_trial=1",
             "hparams_search.metric=eval/CartPole-v1/return", "hydra.sweeper.n_trials=2", "data.batch_size=choice(16,32)",
             "ckpt_path=auto", f"hydra.sweep.dir={sweep}", *overrides],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    stored = "hydra.sweeper.storage=sqlite:///${hydra.sweep.dir}/optuna.db"  # the preset's documented storage
    for _ in range(2):
        res = launch(stored)
        assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    for trial in study.trials:  # each study trial in the folder of its number
        given = (sweep / str(trial.number) / ".hydra" / "overrides.yaml").read_text()
        assert f"data.batch_size={trial.params['data.batch_size']}" in given
        assert f"optimizer.lr={trial.params['optimizer.lr']}" in given
        assert json.loads((sweep / str(trial.number) / "trial.json").read_text())["status"] == "completed"
    res = launch()  # the preset's in-memory study: nothing of the folder's study to continue
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith(
        f"mtdqn: error: {sweep} holds the trial folders of an earlier study (0, 1, 2, 3): an in-memory study")
    assert not (sweep / "4").exists()


def test_wandb_run_names_tell_the_arms_of_a_multirun_apart():
    """`<experiment>-seed<s>` alone would name optimizer=adam and optimizer=adabelief runs of one seed alike."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mtdqn.train import run_name

    assert run_name("lane", 3, None) == "lane-seed3"
    assert run_name("lane", 0, ["+experiment=lane", "seed=0", "optimizer=adam"]) == "lane-optimizer=adam,seed=0"
    assert run_name("lane", 0, ["+experiment=lane"]) == "lane-seed0"
    assert run_name("lane", 0, ["+experiment=lane", "seed=0", "+debug=smoke"]) == "lane-debug=smoke,seed=0"
    # an Optuna trial trains seeds_per_trial seeds under one set of overrides: each seed its own name
    trial = ["+experiment=lane", "optimizer.lr=0.001"]
    assert run_name("lane", 0, trial) == "lane-optimizer.lr=0.001,seed=0" != run_name("lane", 1, trial)
    cfg = compose_with_hydra(["logger=wandb", "seed=1", "optimizer=adabelief"])
    assert cfg.logger.wandb.name == "default-seed1"  # no Hydra job running: a plain run's name
    cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    try:
        assert cfg.logger.wandb.name == "default-logger=wandb,optimizer=adabelief,seed=1"
    finally:
        HydraConfig.instance().cfg = None
