"""scripts/bench_dqn.py and scripts/bench_atari.py, our side alone (SB3's needs `.[bench]`), and what they share with
bench_minatar through scripts/bench_common.py: the common flags, the machine line, the wall-time ratio, the record."""

from __future__ import annotations

import argparse
import json

import pytest

from tests.helpers.scripts import run_script, script_module


def test_bench_dqn_ours_alone_trains_the_preset_and_writes_its_record(tmp_path):
    out = tmp_path / "sub" / "bench.json"
    res = run_script("bench_dqn", "--seeds", "0", "--total-steps", "2000", "--eval-every", "1000",
                     "--eval-episodes", "2", "--skip-sb3", "--skip-fast", "--out", str(out))
    assert res.returncode == 0, res.stderr
    record = json.loads(out.read_text())
    (run,) = record["results"]["mtdqn"]
    assert [h[0] for h in run["history"]] == [1024, 2048] and run["final_return"] == run["history"][-1][2]
    assert run["env_steps"] == 2048 and run["updates"] > 0 and record["results"]["sb3"] == []
    assert record["args"]["out"] == str(out) and record["args"]["seeds"] == [0]
    assert record["results"]["floor"][0]["updates"] == run["updates"]  # the floor does our updates
    assert "| mtdqn |" in record["report"] and "wall-time ratio" not in record["report"]
    assert not out.with_name("bench.json.tmp").exists()


def test_bench_atari_ours_alone_reports_its_replay_cost(tmp_path):
    pytest.importorskip("ale_py", reason="Atari ids need the optional extra .[atari]")
    out = tmp_path / "atari.json"
    res = run_script("bench_atari", "--seeds", "0", "--total-steps", "512", "--learning-starts", "256",
                     "--capacity", "1024", "--skip-sb3", "--out", str(out))
    assert res.returncode == 0, res.stderr
    (run,) = json.loads(out.read_text())["results"]["mtdqn"]
    assert run["env_steps"] == 512 and run["updates"] > 0 and "history" not in run  # no evaluation in this bench
    assert 14_000 < run["replay_bytes_per_transition"] < 15_000  # one 84x84 uint8 frame per transition (+ a little)
    assert "| mtdqn |" in res.stdout


def test_bench_atari_refuses_steps_the_two_frameworks_would_not_take_alike():
    """--total-steps 700 ran 768 env steps under a "700 env steps" header; --learning-starts past the budget was
    refused naming data.learning_starts=<flag + 1>, a value nobody gave."""
    for args, message in ((["--total-steps", "700"], "--total-steps 700: give a positive multiple of 256"),
                          (["--total-steps", "512", "--learning-starts", "600"],
                           "--learning-starts 600 must lie in [0, --total-steps 512)")):
        res = run_script("bench_atari", "--seeds", "0", "--skip-sb3", *args)
        assert res.returncode != 0 and f"bench_atari.py: error: {message}" in res.stderr, res.stderr


def test_every_bench_has_the_common_flags_and_reports_where_it_ran():
    common = script_module("bench_common")
    for name in ("bench_dqn", "bench_atari", "bench_minatar"):
        args = script_module(name).build_parser().parse_args(["--seeds", "3", "4", "--threads", "2", "--skip-sb3"])
        assert (args.seeds, args.threads, args.device, args.skip_sb3, args.out) == ([3, 4], 2, "cpu", True, None)
    line = common.machine_line(argparse.Namespace(seeds=[3, 4], threads=2, device="cpu"))
    assert line.startswith("seeds [3, 4], torch threads 2, ") and "CPUs, torch " in line and line.endswith("cpu")


def test_wall_time_ratio_is_the_median_of_per_seed_ratios():
    common = script_module("bench_common")
    results = {"mtdqn": [{"wall": 1.0}, {"wall": 3.0}, {"wall": 2.0}], "sb3": [{"wall": 2.0}, {"wall": 3.0}, {"wall": 8.0}]}
    line = common.wall_ratio_line(results)
    assert "median of per-seed ratios: 0.500 (per seed: 0.500, 1.000, 0.250)" in line
    assert common.wall_ratio_line({"mtdqn": [{"wall": 1.0}], "sb3": []}) is None
