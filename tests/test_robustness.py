"""Stability and robustness end to end: observation-normalizer statistics through training, checkpoints and
reloading; robustness reports of a tiny checkpoint; domain randomization and adversarial training from config;
the sweep presets' multirun grids."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from mtdqn.callbacks import load_checkpoint
from mtdqn.envs.driving import DrivingVecEnv
from mtdqn.evaluation import stats
from mtdqn.evaluation.robustness import load_trained, robustness_report, write_report
from mtdqn.models.adversarial import AdversarialObs
from mtdqn.train import build, train
from tests.helpers.config import compose_cfg

ROOT = Path(__file__).resolve().parents[1]
TINY = ["+experiment=lane_keep_dqn", "data.total_env_steps=800", "data.learning_starts=300", "data.batch_size=24",
        "data.env_steps_per_round=96", "data.num_envs=4", "callbacks.eval.every_env_steps=400",
        "callbacks.eval.episodes=2", "callbacks.progress=null", "logger=jsonl", "print_config=false",
        "callbacks.checkpoint.every_env_steps=400", "model.target_update_period=300"]  # fmt: skip


@pytest.fixture(scope="module")
def normalized_run(tmp_path_factory):
    """A tiny lane_keep run with net.obs_norm=true: (run dir, live online net, live target net, data module)."""
    from omegaconf import OmegaConf

    run_dir = tmp_path_factory.mktemp("obs_norm_run")
    cfg = compose_cfg([*TINY, "net.obs_norm=true"], run_dir)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # as train() writes it
    model, data, trainer = build(cfg)
    trainer.fit(model, datamodule=data)
    return run_dir, model.q_net, model.target_net, data


def test_obs_norm_statistics_track_collected_observations_and_survive_save_and_load(normalized_run):
    run_dir, q_net, target_net, data = normalized_run
    norm = q_net.obs_norm
    saved = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    steps = saved["RLDataModule"]["env_steps"]
    assert int(norm.count[0]) == steps >= 800  # every collected observation, warm-up included
    buf = data.buffer  # capacity >= 800: replay holds exactly the collected observations
    collected = buf.obs[: buf.size].reshape(-1, buf.obs_dim).double()
    torch.testing.assert_close(norm.mean[0].double(), collected.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.var[0].double(), collected.var(0, unbiased=False), rtol=1e-4, atol=1e-6)
    # the checkpoint holds the statistics of the online and the target network
    for prefix, net in (("q_net.", q_net), ("target_net.", target_net)):
        for name in ("count", "mean", "var"):
            assert torch.equal(saved["state_dict"][f"{prefix}obs_norm.{name}"], getattr(net.obs_norm, name))
    # the target keeps the statistics of its last sync (target_update_period=300 env steps: last at 600)
    assert 0 < int(target_net.obs_norm.count[0]) < steps
    # rebuilding the network from config.yaml + weights-only checkpoint: identical statistics, identical Q-values
    loaded = load_trained(run_dir)
    for name in ("count", "mean", "var"):
        assert torch.equal(getattr(loaded.net.obs_norm, name), getattr(norm, name))
    obs = DrivingVecEnv("lane_keep", 64).reset(99)
    with torch.no_grad():
        assert torch.equal(loaded.net(obs), q_net(obs))


def test_target_network_keeps_its_statistics_until_the_next_sync(tmp_path):
    model, _, _ = build(compose_cfg([*TINY, "net.obs_norm=true"], tmp_path))
    stats_ = torch.zeros(1, 1 + 2 * 26, dtype=torch.float64)
    stats_[0, 0], stats_[0, 1:27], stats_[0, 27:] = 10.0, 5.0, 30.0  # 10 observations, mean 0.5, var 2.75
    model.update_obs_norm(stats_)
    assert int(model.q_net.obs_norm.count[0]) == 10 and int(model.target_net.obs_norm.count[0]) == 0
    model.sync_target(model.target_update_period)
    assert torch.equal(model.target_net.obs_norm.mean, model.q_net.obs_norm.mean)
    torch.testing.assert_close(model.q_net.obs_norm.var, torch.full((1, 26), 2.75))


def test_robustness_report_of_a_tiny_checkpoint(normalized_run, tmp_path):
    run_dir = normalized_run[0]
    axes = {"obs_noise": [0.0, 0.2], "fgsm": [0.0, 0.05, 0.1], "steer_delay": [0, 3]}
    report = robustness_report([run_dir], axes, episodes=3)
    assert list(report["axes"]) == list(axes) and len(report["runs"]) == 1
    run = report["runs"][0]
    for axis, levels in axes.items():
        curve = run["curves"][axis]["lane_keep"]
        assert curve["levels"] == levels and curve["normalized"] is True
        assert len(curve["score"]) == len(curve["return"]) == len(levels)
        assert curve["area"] == pytest.approx(stats.area_under_curve(levels, curve["score"]))
        assert run["areas"][axis] == pytest.approx(curve["area"])
        g = report["groups"][run["group"]]["axes"][axis]
        assert g["area_mean"] == pytest.approx(curve["area"]) and g["area_ci"][0] <= g["area_mean"] <= g["area_ci"][1]
    nominal = run["curves"]["obs_noise"]["lane_keep"]["score"][0]
    assert run["curves"]["fgsm"]["lane_keep"]["score"][0] == nominal == run["curves"]["steer_delay"]["lane_keep"]["score"][0]
    written = write_report(report, tmp_path / "out")
    assert {p.name for p in written} == {"robustness.png", "robustness.md", "robustness.json"}
    assert json.loads((tmp_path / "out" / "robustness.json").read_text())["axes"]["fgsm"] == [0.0, 0.05, 0.1]
    assert "## `steer_delay`" in (tmp_path / "out" / "robustness.md").read_text()
    # the fixture's run was fit without train.py's summary.json: named as not completed
    assert report["unfinished"] == [f"{run_dir} (no summary.json status)"]
    assert "## Not completed (evaluated at their last checkpoint)" in (tmp_path / "out" / "robustness.md").read_text()


def test_reports_name_runs_that_did_not_complete(tmp_path):
    """A killed run's checkpoint (summary.json: running) was evaluated and pooled with finished runs unmentioned."""
    from mtdqn.evaluation.robustness import unfinished

    for name, status in (("done", "completed"), ("killed", "running"), ("bare", None)):
        (tmp_path / name).mkdir()
        if status:
            (tmp_path / name / "summary.json").write_text(json.dumps({"status": status}))
    assert unfinished([tmp_path / n for n in ("done", "killed", "bare")]) == [
        f"{tmp_path / 'killed'} (running)", f"{tmp_path / 'bare'} (no summary.json status)"]


def test_robustness_script_groups_runs_and_validates_axes(normalized_run, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("robustness_script", ROOT / "scripts" / "robustness.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "rob"
    assert script.main([str(normalized_run[0]), "--axis", "slip", "--levels", "0", "0.5", "--episodes", "2",
                        "--by", "net.obs_norm", "--out", str(out), "--no-plots"]) == 0  # fmt: skip
    report = json.loads((out / "robustness.json").read_text())
    assert list(report["groups"]) == ["net.obs_norm=True"] and report["axes"] == {"slip": [0.0, 0.5]}
    assert script.main([str(normalized_run[0]), "--axis", "sticky_actions", "fgsm", "--levels", "0", "1"]) == 2
    assert script.main([str(normalized_run[0]), "--axis", "slip", "--levels", "0", "1.5", "--out", str(out)]) == 2
    assert "slip" in capsys.readouterr().err


def test_domain_randomization_trains_on_randomized_envs_and_evaluates_on_the_nominal_task(tmp_path):
    cfg = compose_cfg([*TINY, "domain_randomization=driving", "domain_randomization.slip=[0.1,0.4]",
                       "perturb.sticky_actions=0.1"], tmp_path)  # fmt: skip
    model, data, trainer = build(cfg)
    data.setup()
    train_env, eval_env = data.env, data.make_eval_env(2)
    assert train_env.env.randomize == {"obs_noise": (0.0, 0.2), "slip": (0.1, 0.4), "steer_delay": (0, 2)}
    assert eval_env.env.randomize == {} and eval_env.knobs["sticky_actions"].eq(0.1).all()
    with pytest.raises(ValueError, match=r"domain_randomization.*light_cycle"):
        build(compose_cfg([*TINY, "+domain_randomization.light_cycle=[10,20]"], tmp_path))
    summary = train(compose_cfg([*TINY, "domain_randomization=driving"], tmp_path / "run"))
    assert summary["status"] == "completed"


def test_adversarial_training_from_config(tmp_path):
    model, data, trainer = build(compose_cfg([*TINY, "adversarial.epsilon=0.02", "adversarial.fraction=0.25"],
                                             tmp_path))  # fmt: skip
    transforms = [t for t in model.batch_transforms if isinstance(t, AdversarialObs)]
    assert len(transforms) == 1 and (transforms[0].epsilon, transforms[0].fraction) == (0.02, 0.25)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step > 0
    assert not any(isinstance(t, AdversarialObs) for t in build(compose_cfg(TINY, tmp_path / "off"))[0].batch_transforms)


def _sweep_grid(preset: str) -> list[dict[str, str]]:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=[f"+experiment={preset}"], return_hydra_config=True)
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    return [dict(zip(params, combo, strict=True)) for combo in itertools.product(*params.values())]


def test_sweep_presets_define_their_grids():
    grid = _sweep_grid("stability_sweep")
    assert len(grid) == 15
    assert {g["optimizer"] for g in grid} == {"adam", "rmsprop", "adabelief"}
    assert {g["seed"] for g in grid} == {"0", "1", "2", "3", "4"}
    dr = _sweep_grid("lane_keep_dr")
    assert len(dr) == 9 and {g["domain_randomization"] for g in dr} == {"none", "driving", "steer_delay"}
    delay_only = compose_cfg(["+experiment=lane_keep_dr", "domain_randomization=steer_delay"], "/tmp/unused")
    assert dict(delay_only.domain_randomization) == {"steer_delay": [0, 3]}
    for preset in ("stability_sweep", "lane_keep_dr"):
        cfg = compose_cfg([f"+experiment={preset}"], "/tmp/unused")
        base = compose_cfg(["+experiment=lane_keep_dqn"], "/tmp/unused")
        assert cfg.data == base.data and cfg.model == base.model and cfg.optimizer == base.optimizer
        assert cfg.experiment_name == preset


def test_episode_report_script_counts_how_episodes_end(normalized_run, tmp_path, capsys):
    import importlib.util

    from mtdqn.envs.driving import DrivingVecEnv as Env
    from mtdqn.evaluation.episodes import run_episode_stats

    spec = importlib.util.spec_from_file_location("episode_report", ROOT / "scripts" / "episode_report.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "outcomes"
    assert script.main([str(normalized_run[0]), "--tasks", "lane_keep", "urban", "--episodes", "8",
                        "--by", "net.obs_norm", "--out", str(out), "--n-boot", "200"]) == 0  # fmt: skip
    report = json.loads((out / "outcomes.json").read_text())
    rows = {r["task"]: r for r in report["rows"]}
    assert set(rows) == {"lane_keep", "urban"} and rows["urban"]["policy"] == "lane_keep"
    for r in rows.values():  # every episode either completes or ends for exactly one reason
        total = r["completion_rate"] + r["collision_rate"] + r["red_light_rate"] + r["offroad_rate"]
        assert total == pytest.approx(1.0)
    assert rows["lane_keep"]["collision_rate"] == rows["lane_keep"]["red_light_rate"] == 0.0  # no hazards there
    run = load_trained(normalized_run[0])
    q = run.q_function(0)
    direct = run_episode_stats(lambda obs: q(obs).argmax(-1), Env("urban", 8), seed=30_000)
    assert rows["urban"]["return"] == pytest.approx(float(direct.returns.mean()))
    assert rows["urban"]["collision_rate"] == pytest.approx(direct.rates()["collision_rate"])
    g = report["groups"]["net.obs_norm=True"]["urban"]
    assert g["n_runs"] == 1 and g["collision_rate"]["mean"] == pytest.approx(rows["urban"]["collision_rate"])
    assert "| net.obs_norm=True | urban | 1 |" in (out / "outcomes.md").read_text()
    assert script.main([str(normalized_run[0]), "--episodes", "0", "--out", str(out)]) == 2
    assert "--episodes" in capsys.readouterr().err


def test_episode_report_records_each_runs_episode_0_of_every_task_as_a_gif(normalized_run, tmp_path, capsys):
    import importlib.util

    from PIL import Image

    from mtdqn.envs.driving import DrivingVecEnv as Env
    from mtdqn.evaluation.episodes import run_episode_stats

    spec = importlib.util.spec_from_file_location("episode_report", ROOT / "scripts" / "episode_report.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    run_dir, videos = normalized_run[0], tmp_path / "videos"
    assert script.main([str(run_dir), "--tasks", "lane_keep", "urban", "--episodes", "2", "--seed", "7",
                        "--out", str(tmp_path / "outcomes"), "--n-boot", "50", "--video", str(videos)]) == 0  # fmt: skip
    gifs = {p.stem: p for p in (videos / run_dir.parent.name / run_dir.name).glob("*.gif")}
    assert sorted(gifs) == ["lane_keep", "urban"]
    assert f"video: {gifs['urban']}" in capsys.readouterr().out
    q = load_trained(run_dir).q_function(0)
    played = run_episode_stats(lambda obs: q(obs).argmax(-1), Env("urban", 1), seed=7)  # the report's episode 0
    with Image.open(gifs["urban"]) as im:  # a frame per step at 10 fps (identical neighbours merged by Pillow)
        total = 0
        for i in range(im.n_frames):
            im.seek(i)
            total += im.info["duration"]
    assert total == int(played.lengths[0]) * 100


def test_an_image_run_with_a_slashed_gym_id_is_reported_and_reloaded(tmp_path):
    """A tiny `+experiment=minatar_dqn` run (convolutional encoder, id 'MinAtar/Breakout-v1' whose spec name is
    'MinAtar-Breakout-v1'): reloaded with its encoder, it plays the same greedy actions, and both reports find its
    environment by the configured id."""
    pytest.importorskip("minatar", reason="MinAtar ids need the optional extra .[minatar]")
    from mtdqn.evaluation.outcomes import outcome_report

    run_dir = tmp_path / "run"
    tiny = [t for t in TINY if not t.startswith(("+experiment", "model.target"))]
    summary = train(compose_cfg(["+experiment=minatar_dqn", *tiny], run_dir))
    assert summary["status"] == "completed"
    run = load_trained(run_dir)
    assert run.net.encoder is not None and run.task_ids == ["MinAtar/Breakout-v1"]
    live = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    obs = torch.rand(16, 400).round()
    assert run.net.encoder.convs[0].weight.equal(live["q_net.encoder.convs.0.weight"])
    assert run.q_function(0)(obs).shape == (16, 3)
    report = outcome_report([run_dir], episodes=4, n_boot=100, video_dir=tmp_path / "videos")
    rows = report["rows"]
    assert [(r["task"], r["policy"]) for r in rows] == [("MinAtar/Breakout-v1", "MinAtar-Breakout-v1")]
    assert report["videos"] == [str(tmp_path / "videos" / tmp_path.name / "run" / "MinAtar-Breakout-v1.gif")]
    from PIL import Image

    with Image.open(report["videos"][0]) as im:
        assert im.size == (160, 160)  # MinAtar's 10 x 10 board enlarged 16x
    curves = robustness_report([run_dir], {"fgsm": [0.0, 0.05]}, episodes=2)["runs"][0]["curves"]["fgsm"]
    assert list(curves) == ["MinAtar-Breakout-v1"] and len(curves["MinAtar-Breakout-v1"]["return"]) == 2


def test_runs_that_share_a_folder_name_stay_separate_groups_and_videos(normalized_run, tmp_path):
    """Two sweeps each have a job `0` (a/sweep/0, b/sweep/0): without --by each run is its own group, labelled by
    as much of its path as tells them apart (they were pooled as one group `0` / `sweep/0` of 2 runs, and the
    second run's GIFs overwrote the first's)."""
    import shutil

    from mtdqn.evaluation.outcomes import outcome_report

    for top in ("a", "b"):
        shutil.copytree(normalized_run[0], tmp_path / "runs" / top / "sweep" / "0")
    roots = [tmp_path / "runs" / "a", tmp_path / "runs" / "b"]
    report = robustness_report(roots, {"obs_noise": [0.0, 0.2]}, episodes=2, n_boot=50)
    assert {g: v["n_runs"] for g, v in report["groups"].items()} == {"a/sweep/0": 1, "b/sweep/0": 1}
    outcomes = outcome_report(roots, episodes=2, n_boot=50, video_dir=tmp_path / "videos")
    assert {g: v["lane_keep"]["n_runs"] for g, v in outcomes["groups"].items()} == {"a/sweep/0": 1, "b/sweep/0": 1}
    assert sorted(outcomes["videos"]) == [str(tmp_path / "videos" / t / "sweep" / "0" / "lane_keep.gif") for t in "ab"]
    assert all(Path(v).is_file() for v in outcomes["videos"])
    single = outcome_report([roots[0]], episodes=2, n_boot=50)  # one run: parent/name, as before
    assert list(single["groups"]) == ["sweep/0"]


def test_runs_scored_on_other_levels_or_scales_are_not_pooled(normalized_run, tmp_path):
    """A CartPole run (returns; gym observation-noise levels) beside a lane_keep run (normalized scores; driving
    levels): its curve was printed under the first run's levels and its area differenced against a normalized one."""
    cart = tmp_path / "cart"
    tiny = [t for t in TINY if not t.startswith(("+experiment", "model.target"))]
    assert train(compose_cfg(["task_set=cartpole", *tiny], cart))["status"] == "completed"
    with pytest.raises(ValueError, match=r"default obs_noise levels \[0\.0, 0\.01.*differ from the first run's "
                                         r"\[0\.0, 0\.05.*pass --axis obs_noise --levels"):
        robustness_report([normalized_run[0], cart], ["obs_noise"], episodes=2)
    with pytest.raises(ValueError, match=r"cart: it is scored in returns, the first run .* in normalized scores"):
        robustness_report([normalized_run[0], cart], {"obs_noise": [0.0, 0.01]}, episodes=2)


def test_a_popart_run_is_rebuilt_for_the_reports(tmp_path):
    """model.popart=true puts a PopArt head in the network: load_trained rebuilt the plain heads and failed with a
    state_dict error, so robustness.py and episode_report.py could not play such runs."""
    tiny = [t for t in TINY if not t.startswith(("+experiment", "model.target"))]
    summary = train(compose_cfg(["+experiment=lane_keep_mtl", *tiny, "model.popart=true"], tmp_path))
    assert summary["status"] == "completed"
    run = load_trained(tmp_path)
    live = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert run.net.popart is not None and torch.equal(run.net.popart.nu, live["q_net.popart.nu"])
    report = robustness_report([tmp_path], {"obs_noise": [0.0, 0.1]}, episodes=2, n_boot=50)
    assert set(report["runs"][0]["curves"]["obs_noise"]) == {"lane_keep", "pedestrian", "traffic_light"}


def test_failed_runs_are_left_out_and_counted_unless_included(normalized_run, tmp_path):
    """A stability sweep's diverged runs were scored from their last checkpoint before divergence and pooled with
    the others, their arm's robustness looking worse, with only a footnote; as compare.py does, they are now left
    out and counted beside their group (`--failed include` evaluates them)."""
    import shutil

    from mtdqn.evaluation.robustness import render_markdown

    for job in "012":
        shutil.copytree(normalized_run[0], tmp_path / "sweep" / job)
        (tmp_path / "sweep" / job / "summary.json").write_text(json.dumps({"status": "completed"}))
    (tmp_path / "sweep" / "1" / "summary.json").write_text(json.dumps({"status": "failed", "error": "diverged"}))
    report = robustness_report([tmp_path / "sweep"], {"obs_noise": [0.0, 0.2]}, by=["seed"], episodes=2, n_boot=50)
    (label,) = report["groups"]
    assert report["groups"][label]["n_runs"] == 2 and report["failed"] == {label: [str(tmp_path / "sweep" / "1")]}
    text = render_markdown(report)
    assert "| 2 (+1 failed) |" in text and "## Failed, left out" in text
    included = robustness_report([tmp_path / "sweep"], {"obs_noise": [0.0, 0.2]}, by=["seed"], episodes=2,
                                 n_boot=50, failed="include")
    assert included["groups"][label]["n_runs"] == 3 and not included["failed"]
    for job in "02":
        (tmp_path / "sweep" / job / "summary.json").write_text(json.dumps({"status": "failed"}))
    with pytest.raises(ValueError, match=r"every run with checkpoints/last.ckpt below .* failed \(3\); --failed "
                                         r"include evaluates them"):
        robustness_report([tmp_path / "sweep"], {"obs_noise": [0.0, 0.2]}, episodes=2)
