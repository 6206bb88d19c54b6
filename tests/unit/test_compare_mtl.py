"""scripts/compare_mtl.py on hand-made bench_mtl.py records (no training)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import compare_mtl  # noqa: E402

from tests.helpers.scripts import run_script  # noqa: E402


def record(path: Path, solved: list[float | None], own: list[dict | None] | None = None,
           budget: float = 330_000.0, single: list[float | None] | None = None) -> Path:
    runs = []
    for seed, steps in enumerate(solved):
        runs.append({"seed": seed, "mtl": {"solved_steps": steps, "each_steps": steps,
                                            "own_steps": (own or [None] * len(solved))[seed] or
                                            {"lane_keep": None, "pedestrian": None, "traffic_light": None},
                                            "budget_steps": budget},
                     "single": {"solved_steps": single[seed]} if single else {}})
    path.write_text(json.dumps({"args": {}, "runs": runs}))
    return path


def test_run_cost_criteria() -> None:
    mtl = {"solved_steps": 300.0, "each_steps": 200.0, "own_steps": {"a": 50.0, "b": 70.0}}
    assert compare_mtl.run_cost(mtl, "all") == 300.0
    assert compare_mtl.run_cost(mtl, "each") == 200.0
    assert compare_mtl.run_cost(mtl, "own") == 120.0
    assert compare_mtl.run_cost({"solved_steps": None}, "all") == math.inf
    assert compare_mtl.run_cost({"own_steps": {"a": 5.0, "b": None}}, "own") == math.inf
    with pytest.raises(ValueError, match="allowed"):
        compare_mtl.run_cost(mtl, "first")


def test_compare_pools_records_and_scores_the_option_against_the_baseline(tmp_path: Path) -> None:
    base_a = record(tmp_path / "base_a.json", [300e3, 330e3, None])
    base_b = record(tmp_path / "base_b.json", [240e3])
    option = record(tmp_path / "option.json", [150e3, 180e3, 240e3, None])
    settings = {"base": compare_mtl.load_setting([base_a, base_b], "all"),
                "option": compare_mtl.load_setting([option], "all")}
    assert [r["source"] for r in settings["base"]] == ["base_a.json"] * 3 + ["base_b.json"]
    out = compare_mtl.compare(settings, n_boot=500, n_perm=2000)
    base, opt = out["settings"]["base"], out["settings"]["option"]
    assert (base["runs"], base["solved"], opt["runs"], opt["solved"]) == (4, 3, 4, 3)
    assert base["median"] == 300e3 and opt["median"] == 180e3  # the lower middle run
    v = out["versus"]["option"]
    # option runs vs base runs (240, 300, 330, inf): 150 and 180 win 4 each; 240 ties 240, wins 3; inf ties inf
    assert v["probability_of_improvement"] == pytest.approx((4 + 4 + 3.5 + 0.5) / 16)
    assert v["ci"][0] <= v["probability_of_improvement"] <= v["ci"][1]
    assert 0 < v["p_value"] <= 1


def mtl_run_dir(path: Path, seed: int, first_all: int) -> Path:
    """A multi-task train.py run directory (logger=jsonl), 330k env steps, whose tasks are all >= 0.9 first at
    evaluation `first_all` (1-based; 30k env steps apart)."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"seed: {seed}\ntask_set:\n  kind: driving\n  tasks: [lane_keep, pedestrian, traffic_light]\n"
                                      "model:\n  _target_: mtdqn.models.MultiTaskDQNModule\n")
    rows = [{"time": 10.0 * i, "time/env_steps": 30_000.0 * i, "time/train_seconds": 9.0 * i,
             **{f"eval/{t}/normalized": (0.95 if i >= first_all else 0.5)
                for t in ("lane_keep", "pedestrian", "traffic_light")}} for i in range(1, 12)]
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (path / "summary.json").write_text(json.dumps({"status": "completed"}))
    return path


def test_runs_with_a_longer_budget_are_compared_up_to_the_shortest(tmp_path: Path) -> None:
    """A 450k run that solved at 400k would have been a never-solved run with the other setting's 330k budget."""
    short = record(tmp_path / "short.json", [300e3, None], budget=330e3)
    long = record(tmp_path / "long.json", [200e3, 400e3], budget=450e3)
    settings = {"short": compare_mtl.load_setting([short], "all"), "long": compare_mtl.load_setting([long], "all")}
    out = compare_mtl.compare(settings, n_boot=200, n_perm=200)
    assert out["horizon"] == 330e3 and out["beyond_horizon"] == {"short": 0, "long": 1}
    assert out["settings"]["long"]["costs"] == [200e3, math.inf]
    # long (200k, never) vs short (300k, never): 200k beats both (2), never loses to 300k (0), ties never (0.5)
    assert out["versus"]["long"]["probability_of_improvement"] == pytest.approx(2.5 / 4)
    text = compare_mtl.report(out, "all")
    assert "Compared up to 330k env steps, the shortest run's budget; long: 1 run(s) solved later" in text


def test_cli_compares_records_with_run_directories_and_refuses_bad_input(tmp_path: Path) -> None:
    a = record(tmp_path / "a.json", [300e3, 270e3, 330e3])
    dirs = [mtl_run_dir(tmp_path / f"opt_{s}", s, first) for s, first in enumerate((2, 3, 3))]  # 60k, 90k, 90k
    out = tmp_path / "cmp.json"
    res = run_script("compare_mtl", "--setting", "preset", str(a), "--setting", "option",
                     *map(str, dirs), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "| option vs preset | 1.00" in res.stdout and "60k / 90k / 90k" in res.stdout
    assert "| preset | 3 | 3 | 300k" in res.stdout and "solved later" not in res.stdout  # same 330k budgets
    saved = json.loads(out.read_text())
    assert saved["settings"]["option"]["costs"] == [60e3, 90e3, 90e3]
    assert saved["versus"]["option"]["probability_of_improvement"] == 1.0
    # the threshold times run directories; a record timed at another threshold is refused
    res = run_script("compare_mtl", "--setting", "preset", str(dirs[0]), "--setting", "option",
                     str(dirs[1]), "--threshold", "0.96")
    assert res.returncode == 0, res.stderr
    assert "| preset | 1 | 0 | never" in res.stdout
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    bad = tmp_path / "bad_threshold.json"
    bad.write_text(json.dumps({"args": {"threshold": 0.8}, "runs": []}))
    single = tmp_path / "single"
    mtl_run_dir(single, 0, 1)
    (single / "config.yaml").write_text("seed: 0\ntask_set:\n  kind: driving\n  tasks: [pedestrian]\n"
                                        "model:\n  _target_: mtdqn.models.DQNModule\n")
    for argv, msg in [(["--setting", "preset", str(a)], "at least two --setting"),
                      (["--setting", "preset", str(a), "--setting", "preset", str(a)], "labels must differ"),
                      (["--setting", "preset", str(a), "--setting", "option"], "at least one record"),
                      (["--setting", "preset", str(a), "--setting", "option", str(tmp_path / "none.json")],
                       "no such record or run directory"),
                      (["--setting", "preset", str(a), "--setting", "option", str(broken)], "not JSON"),
                      (["--setting", "preset", str(a), "--setting", "option", str(bad)], "not --threshold 0.9"),
                      (["--setting", "preset", str(a), "--setting", "option", str(single)], "a single-task run"),
                      (["--setting", "preset", str(a), "--setting", "o", str(a), "--criterion", "first"],
                       "invalid choice: 'first' (choose from 'all', 'each', 'own')")]:
        res = run_script("compare_mtl", *argv)
        assert res.returncode != 0 and msg in res.stderr, (argv, res.stderr)


def test_vs_single_compares_ratios_to_each_seeds_own_single_task_agents(tmp_path: Path) -> None:
    """An option that also speeds up the single-task agents (an observation option) is judged by ratios: here the
    option's multi-task runs need fewer env steps, but its single-task agents need fewer still."""
    base = record(tmp_path / "base.json", [300e3, 240e3, 270e3], single=[300e3, 300e3, 300e3])
    option = record(tmp_path / "option.json", [200e3, 180e3, None, 150e3], single=[200e3, 150e3, 200e3, None])
    steps = compare_mtl.compare({"base": compare_mtl.load_setting([base], "all"),
                                 "option": compare_mtl.load_setting([option], "all")}, n_boot=200, n_perm=200)
    assert steps["versus"]["option"]["probability_of_improvement"] > 0.5  # fewer env steps
    settings = {"base": compare_mtl.load_setting([base], "all", vs_single=True),
                "option": compare_mtl.load_setting([option], "all", vs_single=True)}
    out = compare_mtl.compare(settings, n_boot=200, n_perm=200, vs_single=True)
    assert out["no_single"] == {"base": 0, "option": 1}  # the seed whose single-task agents never solved: no ratio
    assert out["settings"]["base"]["costs"] == pytest.approx([1.0, 0.8, 0.9])
    assert out["settings"]["option"]["costs"] == [1.0, 1.2, math.inf]
    # option (1.0, 1.2, never) vs base (0.8, 0.9, 1.0): 1.0 ties 1.0 (0.5), nothing else wins
    assert out["versus"]["option"]["probability_of_improvement"] == pytest.approx(0.5 / 9)
    text = compare_mtl.report(out, "all")
    assert "each divided by its seed's single-task agents' summed env steps" in text
    assert "Left out (their seed's single-task agents did not all solve, so there is no ratio): option: 1 run(s)" in text
    assert "| option | 3 | 2 | 1.20 [" in text and "1.00 / 1.20 / never" in text and "needs a lower ratio" in text
    res = run_script("compare_mtl", "--setting", "base", str(base), "--setting", "option",
                     str(mtl_run_dir(tmp_path / "run", 0, 2)), "--vs-single")
    assert res.returncode != 0 and "--vs-single needs bench_mtl.py records" in res.stderr


def test_gymnasium_run_directories_are_timed_at_their_bars_and_other_bars_refused(tmp_path: Path) -> None:
    """Multi-task runs on gymnasium ids are timed at each task's reward_threshold (CartPole-v1 475, Acrobot-v1 -100)
    or --solve-return, as bench_mtl.py times them; a record timed at other bars is refused."""
    def gym_dir(path: Path, seed: int, acrobot: list[float]) -> Path:
        path.mkdir(parents=True)
        (path / "config.yaml").write_text(f"seed: {seed}\ntask_set:\n  kind: gym\n  tasks: [CartPole-v1, Acrobot-v1]\n"
                                          "model:\n  _target_: mtdqn.models.MultiTaskDQNModule\n")
        rows = [{"time": 10.0 * i, "time/env_steps": 10_000.0 * i, "time/train_seconds": 9.0 * i,
                 "eval/CartPole-v1/return": 500.0, "eval/Acrobot-v1/return": a} for i, a in enumerate(acrobot, 1)]
        (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        (path / "summary.json").write_text(json.dumps({"status": "completed"}))
        return path

    a = gym_dir(tmp_path / "a", 0, [-300.0, -120.0, -90.0])  # at -100 from 30k, at -150 from 20k
    b = gym_dir(tmp_path / "b", 0, [-90.0, -90.0, -90.0])  # 10k
    res = run_script("compare_mtl", "--setting", "a", str(a), "--setting", "b", str(b))
    assert res.returncode == 0, res.stderr
    assert "| a | 1 | 1 | 30k" in res.stdout
    res = run_script("compare_mtl", "--setting", "a", str(a), "--setting", "b", str(b),
                     "--solve-return", "Acrobot-v1=-150")
    assert res.returncode == 0 and "| a | 1 | 1 | 20k" in res.stdout, res.stderr
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps({"args": {}, "runs": [{"seed": 0, "mtl": {
        "solved_steps": 20e3, "each_steps": 20e3, "budget_steps": 30e3, "final": {"CartPole-v1": 500.0,
                                                                                "Acrobot-v1": -90.0},
        "bars": {"CartPole-v1": ["return", 475.0], "Acrobot-v1": ["return", -150.0]}}}]}))
    res = run_script("compare_mtl", "--setting", "rec", str(rec), "--setting", "b", str(b))
    assert res.returncode != 0 and "timed at different bars" in res.stderr and "Acrobot-v1 return >= -150" in res.stderr


@pytest.mark.parametrize("configured", [None, 150e3])
def test_runs_stopped_once_solved_bound_the_others_by_their_configured_budget(tmp_path: Path, configured) -> None:
    """A run that callbacks.eval.stop_at_* ended at 40k (solved) has no budget there. Without a recorded configured
    budget (records before 2026-12-01) the others are compared up to the shortest real budget (here 200k), not cut
    at 40k; with one (time/budget_env_steps, recorded by bench_mtl as configured_steps: 150k) up to it, so the
    other setting's run that solved at 180k would not have within it and counts as never."""
    rec = tmp_path / "stopped.json"
    runs = [{"seed": s, "mtl": {"solved_steps": v, "each_steps": v, "budget_steps": v or 200e3,
                                **({"stopped_solved": True, "configured_steps": configured} if v else {})}}
            for s, v in enumerate([40e3, 150e3, None])]
    rec.write_text(json.dumps({"args": {}, "runs": runs}))
    other = record(tmp_path / "other.json", [60e3, 70e3, 180e3], budget=200e3)
    out = compare_mtl.compare({"a": compare_mtl.load_setting([rec], "all"),
                               "b": compare_mtl.load_setting([other], "all")}, n_boot=200, n_perm=200)
    assert out["horizon"] == (configured or 200e3)
    assert out["beyond_horizon"] == {"a": 0, "b": 0 if configured is None else 1}
    assert out["settings"]["a"]["costs"] == [40e3, 150e3, math.inf]
    assert out["settings"]["b"]["costs"] == [60e3, 70e3, 180e3 if configured is None else math.inf]


def test_a_sweep_folder_or_its_glob_stands_for_its_runs(tmp_path: Path) -> None:
    """The README's `outputs/multirun/<option>/<time>/*` also lists Hydra's multirun.yaml ("not JSON" refused the
    comparison), and the folder itself crashed on its missing config.yaml; both now give the sweep's runs."""
    a = record(tmp_path / "a.json", [300e3, 270e3, 330e3])
    sweep = tmp_path / "multirun" / "opt" / "12-00-00"
    for s, first in enumerate((2, 3, 3)):
        mtl_run_dir(sweep / str(s), s, first)
    (sweep / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for paths in ([str(sweep)], sorted(map(str, sweep.glob("*"))), [str(tmp_path / "multirun")]):
        res = run_script("compare_mtl", "--setting", "preset", str(a), "--setting", "option", *paths)
        assert res.returncode == 0, (paths, res.stderr)
        assert "60k / 90k / 90k" in res.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_script("compare_mtl", "--setting", "preset", str(a), "--setting", "option", str(empty))
    assert res.returncode != 0 and "neither a run directory (no config.yaml) nor a sweep" in res.stderr
    (sweep / "1" / "summary.json").write_text(json.dumps({"status": "failed"}))
    res = run_script("compare_mtl", "--setting", "preset", str(a), "--setting", "option", str(sweep))
    assert res.returncode != 0 and f"{sweep / '1'}: the run has not completed" in res.stderr
    assert "--runs" not in res.stderr  # compare_mtl has no --runs flag
