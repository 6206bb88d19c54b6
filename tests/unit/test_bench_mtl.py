"""scripts/bench_mtl.py --merge --runs on synthetic train.py run directories (no training)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.scripts import run_script, script_module

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("lane_keep", "pedestrian", "traffic_light")


def run_dir(path: Path, seed: int, tasks: list[str], evals: list[dict[str, float]], mtl: bool,
            extras: list[dict[str, float]] | None = None, episodes: int | None = None, kind: str = "driving") -> Path:
    """A run directory as train.py writes it with logger=jsonl: config.yaml + metrics.jsonl (`evals`: each
    evaluation's normalized score per task, or its mean return for kind="gym"; `extras`: more metrics of each
    evaluation row; `episodes`: callbacks.eval.episodes)."""
    path.mkdir(parents=True)
    target = "mtdqn.models.MultiTaskDQNModule" if mtl else "mtdqn.models.DQNModule"
    (path / "config.yaml").write_text(f"seed: {seed}\ntask_set:\n  kind: {kind}\n  tasks: [{', '.join(tasks)}]\n"
                                      f"model:\n  _target_: {target}\n"
                                      + (f"callbacks:\n  eval:\n    episodes: {episodes}\n" if episodes else ""))
    metric = "normalized" if kind == "driving" else "return"
    rows = [{"time": 1.0, "time/env_steps": 1.0}]  # a training row without evaluations
    for i, scores in enumerate(evals, start=1):
        rows.append({"time": 10.0 * i, "time/env_steps": 1000.0 * i, "time/train_seconds": 60.0 * i,
                     **{f"eval/{t}/return": v for t, v in scores.items()},  # driving: any value, read is normalized
                     **{f"eval/{t}/{metric}": v for t, v in scores.items()}, **(extras or [{}] * len(evals))[i - 1]})
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (path / "summary.json").write_text(json.dumps({"status": "completed"}))
    return path


def merge(tmp_path: Path, runs: list[Path], *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    """bench_mtl.py --merge (from an empty record) --runs <runs> --out merged.json [extra arguments]: (the process,
    the JSON path)."""
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"args": {"seeds": []}, "runs": []}))
    out = tmp_path / "merged.json"
    res = run_script("bench_mtl", "--merge", str(empty), "--runs", *map(str, runs), "--out", str(out), *extra)
    return res, out


def test_merge_replaces_agents_from_run_dirs_and_reports_ratio_and_minutes(tmp_path):
    runs = []
    for seed in (0, 1):
        # multi-task: all three >= 0.9 first at the 3rd evaluation (3000 env steps, 180 s of training)
        evals = [dict.fromkeys(TASKS, 0.5), {"lane_keep": 0.95, "pedestrian": 0.8, "traffic_light": 0.95},
                 dict.fromkeys(TASKS, 0.92), dict.fromkeys(TASKS, 0.7)]
        runs.append(run_dir(tmp_path / f"mtl{seed}", seed, list(TASKS), evals, mtl=True))
        for task, first in zip(TASKS, (1, 2, 3), strict=True):  # single agents solve at 1000 / 2000 / 3000 steps
            evals = [{task: 0.95 if i + 1 >= first else 0.1} for i in range(4)]
            runs.append(run_dir(tmp_path / f"{task}{seed}", seed, [task], evals, mtl=False))
    res, out = merge(tmp_path, runs)
    assert res.returncode == 0, res.stderr
    merged = json.loads(out.read_text())["runs"]
    assert [r["seed"] for r in merged] == [0, 1]
    assert merged[0]["mtl"]["solved_steps"] == 3000 and merged[0]["mtl"]["solved_seconds"] == 180
    assert merged[0]["single"]["solved_steps"] == 1000 + 2000 + 3000
    assert "| 0 | 3k | 1k | 2k | 3k | 6k | 0.50 |" in res.stdout
    assert "median 3.0 (2/2 seeds solved; target <= 15)" in res.stdout


def test_merge_refuses_an_incomplete_seed(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"args": {"seeds": []}, "runs": []}))
    mtl = run_dir(tmp_path / "mtl", 0, list(TASKS), [dict.fromkeys(TASKS, 0.95)], mtl=True)
    res = run_script("bench_mtl", "--merge", str(empty),
                     "--runs", str(mtl))
    assert res.returncode != 0 and "incomplete seeds" in res.stderr


def test_merge_refuses_a_run_that_has_not_completed(tmp_path):
    """A run still training (no summary.json yet) or one that failed would give mid-run final scores."""
    runs = [run_dir(tmp_path / "mtl", 0, list(TASKS), [dict.fromkeys(TASKS, 0.95)], mtl=True)]
    runs += [run_dir(tmp_path / t, 0, [t], [{t: 0.95}], mtl=False) for t in TASKS]
    (runs[0] / "summary.json").unlink()
    res, _ = merge(tmp_path, runs)
    assert res.returncode != 0 and "has not completed (summary.json status: still running" in res.stderr
    (runs[0] / "summary.json").write_text(json.dumps({"status": "failed", "error": "ValueError: x"}))
    res, _ = merge(tmp_path, runs)
    assert res.returncode != 0 and "status: failed" in res.stderr


def test_each_task_once_criterion_differs_from_all_at_once(tmp_path):
    """The multi-task agent is also measured by the single-task agents' criterion: the evaluation by which every
    task has reached the threshold once (here 3000 env steps), not the first where all are at once (4000)."""
    evals = [dict.fromkeys(TASKS, 0.5), {"lane_keep": 0.95, "pedestrian": 0.8, "traffic_light": 0.95},
             {"lane_keep": 0.85, "pedestrian": 0.92, "traffic_light": 0.7}, dict.fromkeys(TASKS, 0.92)]
    runs = [run_dir(tmp_path / "mtl", 0, list(TASKS), evals, mtl=True)]
    for task in TASKS:  # each single agent solves at 1000 env steps: 3000 summed
        runs.append(run_dir(tmp_path / task, 0, [task], [{task: 0.95}] * 4, mtl=False))
    res, out = merge(tmp_path, runs)
    assert res.returncode == 0, res.stderr
    mtl = json.loads(out.read_text())["runs"][0]["mtl"]
    assert mtl["solved_steps"] == 4000 and mtl["each_steps"] == 3000
    assert "| 0 | 4k | 1k | 1k | 1k | 3k | 1.33 | 3k | 1.00 |" in res.stdout


def own_steps_runs(tmp_path: Path, extras: list[dict[str, float]]) -> list[Path]:
    """One seed: a multi-task run whose tasks first reach 0.9 at evaluations 1 (lane_keep), 2 (pedestrian) and
    3 (traffic_light), every 1000 env steps summed; single-task agents at 1000 / 2000 / 4000 env steps."""
    evals = [{"lane_keep": 0.95, "pedestrian": 0.5, "traffic_light": 0.5},
             {"lane_keep": 0.95, "pedestrian": 0.95, "traffic_light": 0.5}, dict.fromkeys(TASKS, 0.95)]
    runs = [run_dir(tmp_path / "mtl", 0, list(TASKS), evals, mtl=True, extras=extras)]
    for task, first in zip(TASKS, (1, 2, 4), strict=True):
        evals = [{task: 0.95 if i + 1 >= first else 0.1} for i in range(4)]
        runs.append(run_dir(tmp_path / task, 0, [task], evals, mtl=False))
    return runs


def test_own_env_steps_per_task_from_the_logged_counts(tmp_path):
    """Each task is timed by the multi-task agent's own env steps on it (time/<task>/env_steps), the way a
    single-task agent is timed: lane_keep 100 / 1000, pedestrian 600 / 2000, traffic_light 1800 / 4000."""
    counts = [(100, 300, 600), (200, 600, 1200), (300, 900, 1800)]
    extras = [{f"time/{t}/env_steps": float(c) for t, c in zip(TASKS, row, strict=True)} for row in counts]
    res, out = merge(tmp_path, own_steps_runs(tmp_path, extras))
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["runs"][0]["mtl"]["own_steps"] == {
        "lane_keep": 100, "pedestrian": 600, "traffic_light": 1800}
    assert "| lane_keep | 0k | 1k | 0.10 | 1 |" in res.stdout
    assert "| traffic_light | 2k | 4k | 0.45 | 1 |" in res.stdout
    assert "not a run that was made): 0.357 of the single-task agents' summed steps" in res.stdout  # 2500 / 7000
    # single-task agents at 1000 / 2000 / 4000 of 7000: with one task free, the rest cost 6/7, 5/7, 3/7
    assert ("the ratio would be 0.86 with lane_keep free, 0.71 with pedestrian free, 0.43 with traffic_light free"
            in res.stdout)


def test_own_env_steps_integrated_from_collection_shares_when_not_logged(tmp_path):
    """Runs from before the per-task count: the share logged at an evaluation is collected until the next one,
    the configured split before the first (here 8 / 8 / 8 vector steps per round, data.collect_weights unset), so
    lane_keep's share dropping at evaluation 1 (by_score: it was solved there) counts from then on."""
    shares = [(0.05, 0.55, 0.4), (0.05, 0.15, 0.8), (0.05, 0.15, 0.8)]
    extras = [{f"data/{t}/collect_share": v for t, v in zip(TASKS, row, strict=True)} for row in shares]
    runs = own_steps_runs(tmp_path, extras)
    with (runs[0] / "config.yaml").open("a") as f:
        f.write("data:\n  num_envs: 16\n  env_steps_per_round: 384\n  collect_weights: null\n")
    res, out = merge(tmp_path, runs)
    assert res.returncode == 0, res.stderr
    own = json.loads(out.read_text())["runs"][0]["mtl"]["own_steps"]
    assert own["lane_keep"] == pytest.approx(1000 / 3)  # the configured third until evaluation 1
    assert own["pedestrian"] == pytest.approx(1000 / 3 + 550)  # then 0.55 x 1000 to evaluation 2
    assert own["traffic_light"] == pytest.approx(1000 / 3 + 400 + 800)


def test_agents_with_different_shared_settings_are_refused(tmp_path):
    """--runs whose configs differ in the TD loss are refused; so is a bench run whose composed agents differ, before
    any training (the single-task preset alone is Huber with replay ratio 0.125, the multi-task one MSE with 0.25;
    --no-align keeps it so)."""
    runs = [run_dir(tmp_path / "mtl", 0, list(TASKS), [dict.fromkeys(TASKS, 0.95)], mtl=True)]
    runs += [run_dir(tmp_path / t, 0, [t], [{t: 0.95}], mtl=False) for t in TASKS]
    for r in runs:
        loss = "mse" if r.name != "pedestrian" else "huber"
        (r / "config.yaml").write_text((r / "config.yaml").read_text().replace("model:\n", f"model:\n  loss: {loss}\n"))
    res, _ = merge(tmp_path, runs)
    assert res.returncode != 0 and "differ in model.loss" in res.stderr and str(runs[2]) in res.stderr
    for r in runs:  # the same loss, but the multi-task agent sees the stop point and the single-task agents do not
        kwargs = "{stop_feature: true}" if r == runs[0] else "{}"
        text = (r / "config.yaml").read_text().replace("loss: huber", "loss: mse")
        (r / "config.yaml").write_text(text.replace("task_set:\n", f"task_set:\n  env_kwargs: {kwargs}\n"))
    res, _ = merge(tmp_path, runs)
    assert res.returncode != 0 and "differ in task_set.env_kwargs" in res.stderr
    res = run_script("bench_mtl", "--seeds", "0", "--no-align")
    assert res.returncode != 0 and "the agents differ in model.loss" in res.stderr
    assert "'mtl': 'mse'" in res.stderr and "'lane_keep': 'huber'" in res.stderr


def test_single_task_agents_get_the_multi_task_agents_shared_settings():
    """By default the single-task agents are given the multi-task preset's SHARED settings (MSE loss, replay ratio
    0.25, and its evaluation episodes) and 300k env steps each: the same hyperparameters by construction, so the
    default bench passes the check that refuses mismatched agents; an explicit --single setting is kept (and then
    judged by that check)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_mtl

    args = bench_mtl.build_parser().parse_args([])
    overrides = bench_mtl.check_overrides(args)  # would raise SystemExit on a mismatch
    for task in TASKS:
        assert {"model.loss=mse", "data.replay_ratio=0.25", "data.total_env_steps=300000"} <= set(overrides[task])
    assert overrides["mtl"] == ["+experiment=lane_keep_mtl", "callbacks.eval.every_env_steps=30000"]
    args.mtl = ["experiment=lane_keep_mtl_share"]  # evaluated on 64 episodes: so are the single-task agents
    assert "callbacks.eval.episodes=64" in bench_mtl.check_overrides(args)["pedestrian"]
    args.mtl = ["experiment=lane_keep_mtl_share", "+task_set.env_kwargs.stop_feature=true"]  # same observation
    aligned = bench_mtl.check_overrides(args)["traffic_light"]
    assert "++task_set.env_kwargs.stop_feature=true" in aligned and "task_set=traffic_light" in aligned
    args.mtl = ["experiment=lane_keep_mtl_share", "data.batch_size_unit=per_task"]  # 128 per task: the singles' 128
    assert not any(o.startswith("data.batch_size") for o in bench_mtl.check_overrides(args)["lane_keep"])
    args.mtl = ["experiment=lane_keep_mtl_share", "replay=prioritized"]  # a replay kind is named, not copied
    with pytest.raises(SystemExit, match=r"differ in replay._target_.*--single replay=prioritized"):
        bench_mtl.check_overrides(args)
    args.single = ["replay=prioritized", "replay.alpha=0.7"]
    with pytest.raises(SystemExit, match="differ in replay.alpha"):
        bench_mtl.check_overrides(args)
    args.single = ["replay=prioritized"]
    assert "replay=prioritized" in bench_mtl.check_overrides(args)["pedestrian"]
    args.mtl, args.single = [], ["model.loss=huber", "data.total_env_steps=100000"]
    assert bench_mtl.agent_overrides(args)["lane_keep"][-2:] == args.single
    assert "data.total_env_steps=300000" not in bench_mtl.agent_overrides(args)["lane_keep"]
    with pytest.raises(SystemExit, match="differ in model.loss"):
        bench_mtl.check_overrides(args)


def with_exploration(path: Path, duration: int, clock: str | None = None) -> None:
    """Add exploration.duration (and data.exploration_clock) to a run_dir's config.yaml."""
    text = (path / "config.yaml").read_text() + f"exploration:\n  duration: {duration}\n"
    (path / "config.yaml").write_text(text + (f"data:\n  exploration_clock: {clock}\n" if clock else ""))


def test_epsilon_decay_is_compared_only_where_it_runs_per_task(tmp_path):
    """A multi-task agent whose epsilon decays on each task's own env steps (data.exploration_clock=task) must decay
    over as many steps as the single-task agents; with the summed clock its duration is a budget over all tasks."""
    runs = [run_dir(tmp_path / "mtl", 0, list(TASKS), [dict.fromkeys(TASKS, 0.95)], mtl=True)]
    runs += [run_dir(tmp_path / t, 0, [t], [{t: 0.95}], mtl=False) for t in TASKS]
    with_exploration(runs[0], 120000, "summed")
    for r in runs[1:]:
        with_exploration(r, 40000)
    res, _ = merge(tmp_path, runs)
    assert res.returncode == 0, res.stderr
    config = runs[0] / "config.yaml"
    config.write_text(config.read_text().replace("exploration_clock: summed", "exploration_clock: task"))
    res, _ = merge(tmp_path, runs)
    assert res.returncode != 0 and "differ in exploration.duration (per task)" in res.stderr
    assert str(runs[0]) in res.stderr


def test_merge_refuses_agents_evaluated_with_different_episode_counts(tmp_path):
    """16-episode single-task agents against a 64-episode multi-task agent would not measure the threshold alike."""
    runs = [run_dir(tmp_path / "mtl", 0, list(TASKS), [dict.fromkeys(TASKS, 0.95)], mtl=True, episodes=64)]
    runs += [run_dir(tmp_path / t, 0, [t], [{t: 0.95}], mtl=False, episodes=16) for t in TASKS]
    res, _ = merge(tmp_path, runs)
    assert res.returncode != 0 and "differ in callbacks.eval.episodes" in res.stderr
    assert str(runs[0]) in res.stderr and str(runs[1]) in res.stderr
    # a record of 16-episode agents (seed 0) merged with 64-episode runs of another seed: refused as well
    (runs[0] / "config.yaml").write_text((runs[0] / "config.yaml").read_text().replace("episodes: 64", "episodes: 16"))
    res, record = merge(tmp_path, runs)
    assert res.returncode == 0, res.stderr
    later = [run_dir(tmp_path / "mtl1", 1, list(TASKS), [dict.fromkeys(TASKS, 0.95)], mtl=True, episodes=64)]
    later += [run_dir(tmp_path / f"{t}1", 1, [t], [{t: 0.95}], mtl=False, episodes=64) for t in TASKS]
    res = run_script("bench_mtl", "--seeds", "0", "1", "--merge",
                     str(record), "--runs", *map(str, later))
    assert res.returncode != 0 and "differ in callbacks.eval.episodes" in res.stderr


def test_eval_noise_is_the_standard_error_of_the_normalized_score(tmp_path):
    """return_std / sqrt(episodes) on the normalized scale (driving reference and random returns), median over
    the run's evaluations, reported per agent and task."""
    from mtdqn.envs import task_spec

    scale = {t: task_spec("driving", t).reference_return - task_spec("driving", t).random_return for t in TASKS}
    evals = [dict.fromkeys(TASKS, 0.95)] * 3
    stds = [10.0, 40.0, 400.0]  # median 40
    extras = [{f"eval/{t}/return_std": sd for t in TASKS} for sd in stds]
    runs = [run_dir(tmp_path / "mtl", 0, list(TASKS), evals, mtl=True, extras=extras, episodes=64)]
    runs += [run_dir(tmp_path / t, 0, [t], [{t: 0.95}], mtl=False, episodes=64,
                     extras=[{f"eval/{t}/return_std": 80.0}]) for t in TASKS]
    res, out = merge(tmp_path, runs)
    assert res.returncode == 0, res.stderr
    merged = json.loads(out.read_text())["runs"][0]
    for t in TASKS:
        assert merged["mtl"]["eval_se"][t] == pytest.approx(40.0 / 8 / scale[t])
        assert merged["single"]["tasks"][t]["eval_se"][t] == pytest.approx(80.0 / 8 / scale[t])
    mtl_row = "| multi-task | 64 | " + " | ".join(f"{40.0 / 8 / scale[t]:.3f}" for t in TASKS) + " |"
    assert mtl_row in res.stdout


def test_eval_noise_is_measured_from_the_first_evaluation_at_the_bar():
    """Before a task is learned its episodes can all end alike (Acrobot's timeouts: no spread); the noise that
    matters is where solving is judged, from the first evaluation at the bar on (all of them if none got there)."""
    bench = script_module("bench_mtl")
    bars = {"Acrobot-v1": bench.Bar("return", -100.0)}
    returns, stds = [-500.0, -500.0, -500.0, -90.0, -120.0, -85.0], [0.0, 0.0, 0.0, 30.0, 50.0, 20.0]
    history = [{"eval/Acrobot-v1/return": r, "eval/Acrobot-v1/return_std": sd}
               for r, sd in zip(returns, stds, strict=True)]
    assert bench.eval_standard_errors(history, 16, bars)["Acrobot-v1"] == pytest.approx(30.0 / 4)  # median of 3
    never = [dict(m, **{"eval/Acrobot-v1/return": -500.0}) for m in history]
    assert bench.eval_standard_errors(never, 16, bars)["Acrobot-v1"] == pytest.approx(10.0 / 4)  # all six: median of 0, 0, 0, 20, 30, 50


def test_records_that_repeat_a_seed_are_pooled_as_separate_draws(tmp_path):
    """The same seed from two records (e.g. one setting run on two machines): both runs count in the medians, each
    labelled with its record; --runs with such records is refused (which run would it replace?)."""
    records = []
    for name, mtl_first in (("machine_a", 3), ("machine_b", 6)):  # all three >= 0.9 at 3000 / 6000 env steps
        own = [{f"time/{t}/env_steps": 1000.0 * i * (k + 1) / 6 for k, t in enumerate(TASKS)} for i in range(1, 7)]
        runs = [run_dir(tmp_path / name / "mtl", 0, list(TASKS),
                        [dict.fromkeys(TASKS, 0.95 if i + 1 >= mtl_first else 0.5) for i in range(6)], mtl=True,
                        extras=own)]
        for task in TASKS:  # single agents solve at 1000 env steps each: 3000 summed
            runs.append(run_dir(tmp_path / name / task, 0, [task], [{task: 0.95}] * 6, mtl=False))
        res, out = merge(tmp_path / name, runs)
        assert res.returncode == 0, res.stderr
        records.append(out.rename(tmp_path / f"{name}.json"))
    cmd = ["--seeds", "0", "--merge", *map(str, records)]
    res = run_script("bench_mtl", *cmd)
    assert res.returncode == 0, res.stderr
    assert "| 0 (machine_a.json) | 3k |" in res.stdout and "| 0 (machine_b.json) | 6k |" in res.stdout
    assert "Ratio multi-task / single-task env steps to solve all: 1.500" in res.stdout  # median of 1.0 and 2.0
    assert "(2 seeds where both solved" in res.stdout
    res = run_script("bench_mtl", *cmd, "--runs", str(tmp_path / "machine_a" / "mtl"))
    assert res.returncode != 0 and "repeat a seed" in res.stderr
    # a record whose runs repeat another's to the last env step (machines that round alike) adds no draw
    copy = tmp_path / "machine_c.json"
    copy.write_text(records[0].read_text())
    res = run_script("bench_mtl", "--seeds", "0", "--merge", *map(str, records), str(copy))
    assert res.returncode == 0, res.stderr
    assert "seed 0 of machine_c.json" in res.stderr and "repeats the outcome of machine_a.json" in res.stderr
    assert "(2 seeds where both solved" in res.stdout and "machine_c.json) |" not in res.stdout


def test_only_runs_that_reached_every_bar_can_repeat_one_another():
    """Two runs alike in every agent's env steps to its bar are one draw; runs where an agent never got there are
    alike in that without being one draw (two unsolved runs of other final scores were dropped as repeats)."""
    bench = script_module("bench_mtl")
    run = {"mtl": {"solved_steps": 30.0, "each_steps": 30.0, "own_steps": {"a": 5.0, "b": 25.0}},
           "single": {"tasks": {"a": {"solved_steps": 10.0}, "b": {"solved_steps": 20.0}}}}
    assert bench.outcome(run) == bench.outcome(json.loads(json.dumps(run))) is not None
    never = json.loads(json.dumps(run))
    never["mtl"].update(solved_steps=None, each_steps=None, own_steps={"a": 5.0, "b": None})
    assert bench.outcome(never) is None


def test_never_solved_multi_task_runs_are_counted_in_a_censored_median(tmp_path):
    """The ratio over seeds where both solved leaves out a multi-task run that never solved, which flatters it;
    the report adds the median with such runs counted as slower than any."""
    runs = []
    for seed, first in ((0, 1), (1, 2), (2, None)):  # multi-task all >= 0.9 at 1000, 2000 env steps, never
        evals = [dict.fromkeys(TASKS, 0.95 if first is not None and i + 1 >= first else 0.5) for i in range(4)]
        runs.append(run_dir(tmp_path / f"mtl{seed}", seed, list(TASKS), evals, mtl=True))
        for task in TASKS:  # every single-task agent solves at 1000 env steps: 3000 summed
            runs.append(run_dir(tmp_path / f"{task}{seed}", seed, [task], [{task: 0.95}] * 4, mtl=False))
    res, _ = merge(tmp_path, runs)
    assert res.returncode == 0, res.stderr
    assert "(2 seeds where both solved; target <= 0.6)" in res.stdout
    # ratios 0.333, 0.667 and never: the median of the three is 0.667
    assert "Counting the 1 multi-task run(s) that never solved as slower than any: median ratio 0.667 over 3 seeds" \
        in res.stdout


def test_batch_size_unit_is_recorded_and_compared_among_multi_task_agents(tmp_path):
    """data.batch_size_unit=per_task (the same batch per task as a single-task agent) is recorded with the
    multi-task run, runs from before the option count as total, and multi-task runs that differ in it are refused
    (the single-task agents have one task: both units are the same for them)."""
    runs = []
    for seed, unit in ((0, "per_task"), (1, None)):
        mtl = run_dir(tmp_path / f"mtl{seed}", seed, list(TASKS), [dict.fromkeys(TASKS, 0.95)], mtl=True)
        if unit:
            (mtl / "config.yaml").write_text((mtl / "config.yaml").read_text()
                                             + f"data:\n  batch_size: 128\n  batch_size_unit: {unit}\n")
        runs += [mtl, *(run_dir(tmp_path / f"{t}{seed}", seed, [t], [{t: 0.95}], mtl=False) for t in TASKS)]
    res, out = merge(tmp_path, runs[:4])
    assert res.returncode == 0, res.stderr
    mtl_entry = json.loads(out.read_text())["runs"][0]["mtl"]
    assert mtl_entry["source"] == str(runs[0]) and mtl_entry["settings"]["data.batch_size_unit"] == "per_task"
    assert "multi-task `data.batch_size_unit=per_task`" in res.stdout  # the table says what it measured
    res, _ = merge(tmp_path, runs)
    assert res.returncode != 0 and "differ in data.batch_size_unit" in res.stderr
    assert "'per_task'" in res.stderr and "'total'" in res.stderr


@pytest.mark.parametrize(("content", "message"), [(None, "no such file"), ("{", "not JSON"),
                                                  ('{"args": {}, "versus": {}}', "not a bench_mtl.py record")])
def test_merge_refuses_what_is_not_a_bench_record_by_name(tmp_path, content, message):
    """A missing file, broken JSON or another script's record (compare_mtl.py's) is named, not a traceback."""
    record = tmp_path / "record.json"
    if content is not None:
        record.write_text(content)
    res = run_script("bench_mtl", "--merge", str(record))
    assert res.returncode != 0 and f"--merge {record}: {message}" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_summaries_give_the_ci_of_the_median_they_show():
    """The bracket beside a median is that median's bootstrap CI, not the mean's: nine runs at 1 and two at 10
    have median 1 and a CI of the median of [1, 1] (six or more 10s in a resample of eleven is under 2.5% likely),
    where the mean's CI reaches far above 1."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_mtl import _kilo
    from learning_results import summarize

    from mtdqn.evaluation.stats import bootstrap_ci

    values = [1.0] * 9 + [10.0] * 2
    assert bootstrap_ci(values)[1] > 5.0  # the mean's CI: what the bracket used to show
    assert summarize(values) == "1.000 [1.000, 1.000]"
    assert _kilo([v * 1000 for v in values]) == "1k [1k, 1k]"


def test_single_task_agents_stopped_once_solved_are_marked_and_still_timed(tmp_path):
    """Single-task runs ended by callbacks.eval.stop_at_normalized (their last evaluation logs
    time/stopped_solved) are timed as any other, and the report says their finals and wall times end there."""
    runs = [run_dir(tmp_path / "mtl", 0, list(TASKS), [dict.fromkeys(TASKS, 0.5), dict.fromkeys(TASKS, 0.95)],
                    mtl=True)]
    for task, first in zip(TASKS, (1, 2, 3), strict=True):
        evals = [{task: 0.95 if i + 1 >= first else 0.1} for i in range(first)]
        extras = [{} for _ in range(first - 1)] + [{"time/stopped_solved": 1.0, "time/budget_env_steps": 9000.0}]
        runs.append(run_dir(tmp_path / task, 0, [task], evals, mtl=False, extras=extras))
    res, out = merge(tmp_path, runs)
    assert res.returncode == 0, res.stderr
    single = json.loads(out.read_text())["runs"][0]["single"]
    assert single["solved_steps"] == 1000 + 2000 + 3000
    assert all(single["tasks"][t]["stopped_solved"] for t in TASKS)
    assert all(single["tasks"][t]["configured_steps"] == 9000.0 for t in TASKS)  # the budget they were given
    assert "Stopped once solved" in res.stdout and "some single-task runs" in res.stdout
    assert "multi-task and" not in res.stdout  # the multi-task run trained its whole budget


def test_another_set_of_driving_tasks_is_benched_by_its_own_tasks(tmp_path):
    """A multi-task agent on other driving tasks (--mtl 'task_set.tasks=[pedestrian,traffic_light,urban]') is
    timed and reported over its own tasks, each against its single-task agent; a single-task agent of a task it does
    not train, and records of different task sets, are refused."""
    tasks = ["pedestrian", "traffic_light", "urban"]
    runs = [run_dir(tmp_path / "a" / "mtl", 0, tasks, [dict.fromkeys(tasks, 0.5), dict.fromkeys(tasks, 0.95)],
                    mtl=True)]
    for task, first in zip(tasks, (1, 2, 5), strict=True):  # singles solve at 1000 / 2000 / 5000 env steps
        runs.append(run_dir(tmp_path / "a" / task, 0, [task], [{task: 0.95 if i + 1 >= first else 0.1}
                                                                for i in range(5)], mtl=False))
    res, out = merge(tmp_path / "a", runs)
    assert res.returncode == 0, res.stderr
    assert "Driving tasks pedestrian, traffic_light, urban, multi-task vs single-task" in res.stdout
    assert "| 0 | 2k | 1k | 2k | 5k | 8k | 0.25 |" in res.stdout and "final urban" in res.stdout
    extra = run_dir(tmp_path / "b" / "lane_keep", 0, ["lane_keep"], [{"lane_keep": 0.95}], mtl=False)
    res, _ = merge(tmp_path / "b", [*runs, extra])
    assert res.returncode != 0 and "single-task agents of ['lane_keep']" in res.stderr
    other = [run_dir(tmp_path / "c" / "mtl", 1, list(TASKS), [dict.fromkeys(TASKS, 0.95)], mtl=True)]
    other += [run_dir(tmp_path / "c" / t, 1, [t], [{t: 0.95}], mtl=False) for t in TASKS]
    res, other_out = merge(tmp_path / "c", other)
    assert res.returncode == 0, res.stderr
    res = run_script("bench_mtl", "--seeds", "0", "1", "--merge",
                     str(out), str(other_out))
    assert res.returncode != 0 and "trained different task sets" in res.stderr


def test_the_multi_task_agents_task_set_decides_the_single_task_agents():
    """--mtl 'task_set.tasks=[...]' gives one aligned single-task agent per task of that set and scales the
    multi-task agent's evaluation cadence with the task count; a task set of one task is refused before anything
    trains."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_mtl

    args = bench_mtl.build_parser().parse_args([])
    args.mtl = ["experiment=lane_keep_mtl_share", "task_set.tasks=[pedestrian,urban]", "data.share_fraction=0",
                "data.collect_weights=[0.5,0.5]", "data.task_weights=[0.5,0.5]", "model.task_weights=[1.0,1.0]"]
    overrides = bench_mtl.check_overrides(args)
    assert list(overrides) == ["mtl", "pedestrian", "urban"]
    assert "callbacks.eval.every_env_steps=20000" in overrides["mtl"]
    assert {"task_set=urban", "callbacks.eval.episodes=64", "model.loss=mse"} <= set(overrides["urban"])
    args.mtl = ["task_set.tasks=[pedestrian,pedestrian]"]
    with pytest.raises(SystemExit, match="two or more distinct tasks"):
        bench_mtl.check_overrides(args)


CLASSIC = ["CartPole-v1", "Acrobot-v1"]


def classic_runs(tmp_path: Path) -> list[Path]:
    """One seed on gymnasium ids: the multi-task agent has CartPole-v1 at 475+ from evaluation 2 and Acrobot-v1 at
    -120 at evaluation 2, -90 at 3; the single-task agents reach 475 at evaluation 2 and -140, -90 at 1, 2."""
    runs = [run_dir(tmp_path / "mtl", 0, CLASSIC, [{"CartPole-v1": 100.0, "Acrobot-v1": -500.0},
                                                   {"CartPole-v1": 480.0, "Acrobot-v1": -120.0},
                                                   {"CartPole-v1": 500.0, "Acrobot-v1": -90.0}], mtl=True, kind="gym")]
    runs.append(run_dir(tmp_path / "cart", 0, ["CartPole-v1"], [{"CartPole-v1": v} for v in (200.0, 490.0, 500.0)],
                        mtl=False, kind="gym"))
    runs.append(run_dir(tmp_path / "acro", 0, ["Acrobot-v1"], [{"Acrobot-v1": v} for v in (-140.0, -90.0, -80.0)],
                        mtl=False, kind="gym"))
    return runs


def test_gymnasium_tasks_are_solved_at_their_reward_threshold_or_the_given_return(tmp_path):
    """Tasks without normalized scores (gymnasium ids) count as solved at their registered reward_threshold
    (CartPole-v1 475, Acrobot-v1 -100) or at --solve-return's mean eval return; the bars are recorded, and runs
    timed at other bars are refused when merged."""
    runs = classic_runs(tmp_path / "a")
    res, out = merge(tmp_path / "a", runs)
    assert res.returncode == 0, res.stderr
    assert "Tasks CartPole-v1, Acrobot-v1, multi-task vs single-task DQN" in res.stdout
    assert "solved at CartPole-v1 return >= 475, Acrobot-v1 return >= -100" in res.stdout
    assert "final CartPole-v1 (return)" in res.stdout and "target <=" not in res.stdout  # the driving targets
    assert "| 0 | 3k | 2k | 2k | 4k | 0.75 |" in res.stdout  # multi-task 3000 vs 2000 + 2000
    record = json.loads(out.read_text())["runs"][0]
    assert record["mtl"]["final"] == {"CartPole-v1": 500.0, "Acrobot-v1": -90.0}
    assert record["mtl"]["bars"]["Acrobot-v1"] == ["return", -100.0]
    out = out.rename(tmp_path / "default_bars.json")
    res, _ = merge(tmp_path / "a", runs, "--solve-return", "Acrobot-v1=-150")  # Acrobot-v1 solved one evaluation earlier
    assert res.returncode == 0, res.stderr
    assert "| 0 | 2k | 2k | 1k | 3k | 0.67 |" in res.stdout and "Acrobot-v1 return >= -150" in res.stdout
    later = classic_runs(tmp_path / "b")
    config = later[0] / "config.yaml"
    config.write_text(config.read_text().replace("seed: 0", "seed: 1"))
    for r in later[1:]:
        (r / "config.yaml").write_text((r / "config.yaml").read_text().replace("seed: 0", "seed: 1"))
    res = run_script("bench_mtl", "--seeds", "0", "1", "--merge",
                     str(out), "--runs", *map(str, later), "--solve-return", "Acrobot-v1=-150")
    assert res.returncode != 0 and "Acrobot-v1 was timed at different bars" in res.stderr
    assert "seed 0 multi-task: return >= -100" in res.stderr and "seed 1 multi-task: return >= -150" in res.stderr
    res, _ = merge(tmp_path / "a", runs, "--solve-return", "Pendulum-v1=-200")
    assert res.returncode != 0 and "--solve-return names ['Pendulum-v1'], not tasks of the runs" in res.stderr


def test_a_gymnasium_task_set_gets_single_task_agents_of_its_own_group_and_bars():
    """--mtl experiment=classic_mtl: one single-task agent per gymnasium id, composed from the multi-task agent's
    task_set group with that one id; a task with no reward_threshold registered needs --solve-return (refused by
    name before anything trains), and a malformed --solve-return is refused by argparse."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_mtl
    import gymnasium

    parser = bench_mtl.build_parser()
    args = parser.parse_args(["--mtl", "experiment=classic_mtl", "--single", "experiment=cartpole_dqn",
                              "--eval-every", "5000"])
    overrides = bench_mtl.check_overrides(args)  # composes every agent; refuses a mismatch in a SHARED setting
    assert list(overrides) == ["mtl", *CLASSIC]
    assert {"task_set=gym", 'task_set.tasks=["Acrobot-v1"]', "callbacks.eval.every_env_steps=5000"} <= set(
        overrides["Acrobot-v1"])
    assert "callbacks.eval.every_env_steps=10000" in overrides["mtl"]
    # the printed commands name the presets they train (they read `+experiment=lane_keep_mtl ...
    # experiment=classic_mtl`, which Hydra composes alike)
    assert overrides["mtl"][0] == "+experiment=classic_mtl" and overrides["Acrobot-v1"][0] == "+experiment=cartpole_dqn"
    assert not any("lane_keep" in o for name in overrides for o in overrides[name])
    assert bench_mtl.mtl_task_set(args).bars == {"CartPole-v1": bench_mtl.Bar("return", 475.0),
                                                  "Acrobot-v1": bench_mtl.Bar("return", -100.0)}
    gymnasium.register("NoThresholdCartPole-v0", entry_point="gymnasium.envs.classic_control:CartPoleEnv",
                       max_episode_steps=200)
    try:
        with pytest.raises(SystemExit, match=r"\['NoThresholdCartPole-v0'\]: no normalized score and no gymnasium "
                                             r"reward_threshold.*--solve-return NoThresholdCartPole-v0=<return>"):
            bench_mtl.task_bars("gym", ["CartPole-v1", "NoThresholdCartPole-v0"], None, 0.9, {})
        bars = bench_mtl.task_bars("gym", ["CartPole-v1", "NoThresholdCartPole-v0"], None, 0.9,
                                   {"NoThresholdCartPole-v0": 150.0})
        assert bars["NoThresholdCartPole-v0"] == bench_mtl.Bar("return", 150.0)
    finally:
        gymnasium.registry.pop("NoThresholdCartPole-v0")
    args.solve_return = [("Acrobot-v1", -80.0)]
    assert bench_mtl.mtl_task_set(args).bars["Acrobot-v1"] == bench_mtl.Bar("return", -80.0)
    args.solve_return = [("Acrobot-v1", -80.0), ("Acrobot-v1", -90.0)]
    with pytest.raises(SystemExit, match=r"names \['Acrobot-v1'\] more than once"):
        bench_mtl.mtl_task_set(args)
    # the same network: minatar_dqn's convolutional encoder is cleared for the MLP-adapter minatar_mtl (composed only)
    aligned = bench_mtl.alignment({"mtl": ["+experiment=minatar_mtl"], "MinAtar/Breakout-v1": [
        "+experiment=minatar_dqn"]}, set())
    assert {"net.conv=null", "net.hidden=[256, 256]"} <= set(aligned)
    assert bench_mtl.parse_solve_return("MinAtar/Breakout-v1=10") == ("MinAtar/Breakout-v1", 10.0)
    for bad in ("Acrobot-v1", "Acrobot-v1=nan", "=5", "Acrobot-v1=x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--solve-return", bad])


@pytest.mark.slow
def test_jobs_train_agents_side_by_side_with_the_same_results(tmp_path):
    """--jobs 3 trains a seed's agents in three worker processes: every record but the wall times is the one a
    sequential bench writes (each agent's seed fixes its draws), in seed order."""
    tiny = ["data.total_env_steps=1200", "data.learning_starts=400", "data.env_steps_per_round=128",
            "callbacks.eval.episodes=2"]
    base = [sys.executable, str(ROOT / "scripts" / "bench_mtl.py"), "--seeds", "1", "0", "--mtl",
            "experiment=classic_mtl", *tiny, "--single", "experiment=cartpole_dqn", "data.learning_starts=200",
            "data.env_steps_per_round=64", "--single-steps", "600", "--eval-every", "300"]
    records = {}
    for jobs in (1, 3):
        out = tmp_path / f"jobs{jobs}.json"
        res = subprocess.run([*base, "--jobs", str(jobs), "--out", str(out)], capture_output=True, text=True,
                             cwd=ROOT, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        records[jobs] = json.loads(out.read_text())["runs"]
    assert "3 agents at a time" in res.stdout

    def without_wall(entry):
        if isinstance(entry, dict):
            return {k: without_wall(v) for k, v in entry.items() if k != "wall" and "seconds" not in k}
        return entry

    assert [r["seed"] for r in records[3]] == [1, 0]
    assert [without_wall(r) for r in records[3]] == [without_wall(r) for r in records[1]]
    assert records[1][0]["mtl"]["budget_steps"] >= 1200 and set(records[1][0]["single"]["tasks"]) == {
        "CartPole-v1", "Acrobot-v1"}


@pytest.mark.parametrize(("argv", "message"), [(["--seeds", "0", "0"], "repeats a seed"),
                                               (["--jobs", "0"], "--jobs 0: give the number of agents")])
def test_a_bench_refuses_repeated_seeds_and_no_jobs_before_training(argv, message):
    res = run_script("bench_mtl", *argv)
    assert res.returncode != 0 and message in res.stderr, res.stderr


def test_jobs_go_through_a_process_pool_and_records_come_back_in_seed_order(monkeypatch):
    """--jobs > 1 submits every agent to the process pool (here a stand-in that finishes them in reverse order)
    and assembles each seed's record once its last agent is in, in --seeds order; --jobs 1 submits nothing."""
    import concurrent.futures

    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_mtl

    submitted = []

    class ReversePool:
        def __init__(self, workers, mp_context=None):
            assert workers == 3 and mp_context.get_start_method() == "spawn"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, *args):
            submitted.append(args[:2])
            future = concurrent.futures.Future()
            future.set_result(fn(*args))
            return future

    def fake_run_seed(overrides, seed):  # every agent reaches its bar at its first evaluation
        task = overrides[0]
        keys = ["CartPole-v1", "Acrobot-v1"] if task == "mtl" else [task]
        history = [{"time/env_steps": 1000.0 * (seed + 1), "time/train_seconds": 1.0,
                    **{f"eval/{t}/return": 1e3 for t in keys}}]
        return {"history": history, "wall": 1.0, "eval_episodes": 2}

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", ReversePool)
    monkeypatch.setattr(concurrent.futures, "as_completed", lambda futures: list(futures)[::-1])
    monkeypatch.setattr(bench_mtl, "run_seed", fake_run_seed)
    bars = {"CartPole-v1": bench_mtl.Bar("return", 475.0), "Acrobot-v1": bench_mtl.Bar("return", -100.0)}
    overrides = {name: [name] for name in ("mtl", *bars)}
    args = bench_mtl.build_parser().parse_args(["--seeds", "2", "0", "--jobs", "3"])
    runs = bench_mtl.train_all(args, bars, overrides)
    assert sorted(submitted) == sorted((o, s) for s in (2, 0) for o in overrides.values())
    assert [r["seed"] for r in runs] == [2, 0]
    assert runs[0]["mtl"]["solved_steps"] == 3000 and runs[0]["single"]["solved_steps"] == 6000
    submitted.clear()
    args.jobs = 1
    assert [r["seed"] for r in bench_mtl.train_all(args, bars, overrides)] == [2, 0] and not submitted


def test_merge_reports_every_run_of_the_records_unless_seeds_pick_some(tmp_path):
    """--merge of two records holding seeds 0-3 reported only seeds 0-2 (the training default of --seeds), with no
    word of the runs left out; --seeds of no run said 'different task sets: []'."""
    runs = []
    for seed in range(4):
        runs.append(run_dir(tmp_path / f"mtl{seed}", seed, list(TASKS), [dict.fromkeys(TASKS, 0.95)] * 3, mtl=True))
        for task in TASKS:
            runs.append(run_dir(tmp_path / f"{task}{seed}", seed, [task], [{task: 0.95}] * 3, mtl=False))
    res, record = merge(tmp_path, runs)
    assert res.returncode == 0, res.stderr
    res = run_script("bench_mtl", "--merge", str(record))
    assert res.returncode == 0 and all(f"| {s} | " in res.stdout for s in range(4)), res.stdout
    res = run_script("bench_mtl", "--seeds", "0", "1", "--merge", str(record))
    assert res.returncode == 0 and "| 2 | " not in res.stdout
    assert "--seeds [0, 1]: 2 of the records' 4 runs (their seeds: [0, 1, 2, 3])" in res.stderr
    res = run_script("bench_mtl", "--seeds", "40", "--merge", str(record))
    assert res.returncode != 0 and "the records hold no run of --seeds [40] (their seeds: [0, 1, 2, 3])" in res.stderr
    empty = tmp_path / "none.json"
    empty.write_text(json.dumps({"args": {"seeds": []}, "runs": []}))
    res = run_script("bench_mtl", "--merge", str(empty))
    assert res.returncode != 0 and "no runs to report" in res.stderr
