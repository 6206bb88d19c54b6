"""scripts/compare_mtl.py on hand-made bench_mtl.py records (no training)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import compare_mtl  # noqa: E402


def record(path: Path, solved: list[float | None], own: list[dict | None] | None = None) -> Path:
    runs = []
    for seed, steps in enumerate(solved):
        runs.append({"seed": seed, "mtl": {"solved_steps": steps, "each_steps": steps,
                                            "own_steps": (own or [None] * len(solved))[seed] or
                                            {"lane_keep": None, "pedestrian": None, "traffic_light": None},
                                            "budget_steps": 330_000.0}, "single": {}})
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
    assert [r["record"] for r in settings["base"]] == ["base_a.json"] * 3 + ["base_b.json"]
    out = compare_mtl.compare(settings, n_boot=500, n_perm=2000)
    base, opt = out["settings"]["base"], out["settings"]["option"]
    assert (base["runs"], base["solved"], opt["runs"], opt["solved"]) == (4, 3, 4, 3)
    assert base["median"] == 300e3 and opt["median"] == 180e3  # the lower middle run
    v = out["versus"]["option"]
    # option runs vs base runs (240, 300, 330, inf): 150 and 180 win 4 each; 240 ties 240, wins 3; inf ties inf
    assert v["probability_of_improvement"] == pytest.approx((4 + 4 + 3.5 + 0.5) / 16)
    assert v["ci"][0] <= v["probability_of_improvement"] <= v["ci"][1]
    assert 0 < v["p_value"] <= 1


def test_cli_prints_the_tables_and_refuses_bad_input(tmp_path: Path) -> None:
    a = record(tmp_path / "a.json", [300e3, 270e3, 330e3])
    b = record(tmp_path / "b.json", [150e3, 180e3, 210e3])
    script = str(ROOT / "scripts" / "compare_mtl.py")
    out = tmp_path / "cmp.json"
    res = subprocess.run([sys.executable, script, f"preset={a}", f"option={b}", "--out", str(out)],
                         capture_output=True, text=True, check=True)
    assert "| option vs preset | 1.00" in res.stdout
    assert json.loads(out.read_text())["versus"]["option"]["probability_of_improvement"] == 1.0
    for argv, msg in [([f"preset={a}"], "at least two settings"),
                      ([f"preset={a}", f"preset={b}"], "labels must differ"),
                      ([f"preset={a}", str(b)], "expected LABEL=record.json"),
                      ([f"preset={a}", f"option={tmp_path / 'none.json'}"], "no such file"),
                      ([f"preset={a}", f"option={b}", "--criterion", "first"], "allowed all, each, own")]:
        res = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True)
        assert res.returncode != 0 and msg in res.stderr, (argv, res.stderr)
