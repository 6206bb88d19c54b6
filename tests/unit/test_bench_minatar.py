"""scripts/bench_minatar.py: mtdqn's MinAtar preset beside SB3's DQN with the same network, settings and evaluation."""

from __future__ import annotations

import json

import pytest

from tests.helpers.scripts import run_script, script_module

pytest.importorskip("minatar", reason="MinAtar ids need the optional extra .[minatar]")

TINY = ["--seeds", "0", "--total-steps", "12288", "--eval-every", "6144", "--eval-episodes", "2"]  # learning from 5000


def test_ours_alone_trains_the_preset_and_reports_its_evaluations(tmp_path):
    out = tmp_path / "bench.json"
    res = run_script("bench_minatar", *TINY, "--skip-sb3", "--out", str(out))
    assert res.returncode == 0, res.stderr
    record = json.loads(out.read_text())
    (run,) = record["results"]["mtdqn"]
    assert [h[0] for h in run["history"]] == [6144, 12288]  # every --eval-every env steps, the last at the end
    assert run["env_steps"] == 12288 and run["updates"] == pytest.approx(0.25 * (12288 - 5000), abs=64)
    assert record["results"]["sb3"] == []
    assert "| mtdqn |" in res.stdout and "| sb3 |" not in res.stdout and "env steps to 8 |" in res.stdout


def test_bad_sizes_are_refused_before_training():
    res = run_script("bench_minatar", "--total-steps", "0", "--skip-sb3")
    assert res.returncode == 1 and "--total-steps=0 must be > 0" in res.stderr


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_sb3_gets_the_same_network_the_same_updates_and_the_same_evaluation(tmp_path, net):
    """Both frameworks' Q-networks have the same parameter count (the same layers), do the same number of updates
    to within one of our rounds, and are evaluated at the same env steps."""
    stable_baselines3 = pytest.importorskip("stable_baselines3", reason="the SB3 side needs the optional extra .[bench]")
    from mtdqn.train import build

    bench = script_module("bench_minatar")
    args = bench.build_parser().parse_args([*TINY, "--net", net])
    model, _, _ = build(bench.compose_train([*bench.ours_overrides(args, 0), f"paths.output_dir={tmp_path}"]))
    ours = sum(p.numel() for p in model.q_net.parameters())
    captured = {}

    class Spy(stable_baselines3.DQN):  # run_sb3 imports DQN when called: this subclass records its network size
        def learn(self, *a, **k):
            captured["params"] = sum(p.numel() for p in self.q_net.parameters())
            return super().learn(*a, **k)

    stable_baselines3.DQN, saved = Spy, stable_baselines3.DQN
    try:
        sb3 = bench.run_sb3(0, args)
        mine = bench.run_ours(0, args)
    finally:
        stable_baselines3.DQN = saved
    assert captured["params"] == ours
    assert [h[0] for h in sb3["history"]] == [h[0] for h in mine["history"]] == [6144, 12288]
    assert abs(sb3["updates"] - mine["updates"]) <= 64
