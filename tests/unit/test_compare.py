"""Tests of mtdqn.evaluation.compare and scripts/compare.py on synthetic run directories."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from mtdqn.evaluation import compare as cmp

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `python -m pytest` puts the repo root on sys.path; bare `pytest` does not
    sys.path.insert(0, str(ROOT))

from tests.helpers.runs import (  # noqa: E402
    SWEEP_FINALS,
    base_config,
    ramp_rows,
    write_failed_run,
    write_ramp_run,
    write_run,
    write_sweep,
)

SCRIPT = ROOT / "scripts" / "compare.py"
BOOT = {"n_boot": 300, "seed": 0}
ADAM = "optimizer.name=adam"
SGD = "optimizer.name=sgd"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """The 2 x 3 sweep (adam / sgd x seeds 0-2) plus two failed jobs."""
    root = write_sweep(tmp_path)
    cfg = base_config(seed=3, optimizer={"name": "adam", "lr": 0.001}, experiment_name="mtl_adam")
    write_failed_run(root / "6", cfg, "RuntimeError: CUDA out of memory | while sampling")
    write_failed_run(
        root / "7", base_config(optimizer={"name": "sgd"}), "ValueError: bad config", with_metrics=False
    )
    return root


def _table(summary: dict, name: str) -> dict:
    return next(t for t in summary["tables"] if t["name"] == name)


def test_find_run_dirs_in_a_sweep(sweep: Path, tmp_path: Path) -> None:
    out = sweep / "compare_out"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"tables": []}))  # a previous report is no run
    found = cmp.find_run_dirs([sweep, sweep / "0"], exclude=[out])
    assert [p.name for p in found] == [str(i) for i in range(8)]
    assert cmp.find_run_dirs([sweep / "3" / "metrics.jsonl"]) == [(sweep / "3").resolve()]
    with pytest.raises(FileNotFoundError):
        cmp.find_run_dirs([tmp_path / "nope"])


def test_load_run_tolerates_broken_files(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "r", base_config(), ramp_rows({"lane_keep": 1.0}))
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"env_steps": 5000, "eval/lane_ke')  # a run killed mid-write
    (run_dir / "summary.json").write_text("{not json")
    run = cmp.load_run(run_dir)
    assert run.status == "incomplete" and run.final("eval/lane_keep/normalized") == 1.0
    assert len(run.warnings) == 2
    bare = write_run(
        tmp_path / "bare", {}, [{"env_steps": 0, "step": 0, "time": 0.0, "eval/a/return": float("nan")}]
    )
    (bare / "config.yaml").unlink()
    run = cmp.load_run(bare)
    assert run.config == {} and run.final("eval/a/return") is None and "no config.yaml" in run.warnings[-1]
    assert "non-finite evaluations left out" in run.warnings[0]


def test_get_config_value_nested() -> None:
    cfg = {"optimizer": {"name": "adam", "lr": 0.001}, "tasks": ["a", "b"], "seed": 0}
    assert cmp.get_config_value(cfg, "optimizer.name") == "adam"
    assert cmp.get_config_value(cfg, "optimizer.lr") == 0.001
    assert cmp.get_config_value(cfg, "tasks.1") == "b"
    assert cmp.get_config_value(cfg, "seed") == 0
    assert cmp.get_config_value(cfg, "optimizer.betas") == cmp.MISSING
    assert cmp.get_config_value(cfg, "seed.x", default=None) is None


def test_group_runs_by_nested_keys(tmp_path: Path) -> None:
    runs = []
    for i, (opt, mode, lr) in enumerate(
        [
            ("sgd", "none", 0.1),
            ("adam", "finetune", 0.01),
            ("adam", "none", 0.1),
            ("adam", "none", 0.01),
            ("sgd", "none", 0.01),
        ]
    ):
        cfg = base_config(optimizer={"name": opt, "lr": lr}, transfer={"mode": mode})
        runs.append(cmp.load_run(write_ramp_run(tmp_path / str(i), cfg, {"a": 1.0})))
    runs.append(cmp.load_run(write_ramp_run(tmp_path / "x", {"seed": 0}, {"a": 1.0})))
    groups = cmp.group_runs(runs, ["optimizer.name", "transfer.mode"])
    assert list(groups) == [
        "optimizer.name=<missing>, transfer.mode=<missing>",
        "optimizer.name=adam, transfer.mode=finetune",
        "optimizer.name=adam, transfer.mode=none",
        "optimizer.name=sgd, transfer.mode=none",
    ]
    assert [r.path.name for r in groups["optimizer.name=adam, transfer.mode=none"]] == ["2", "3"]
    by_lr = cmp.group_runs(runs[:5], ["optimizer.lr"])
    assert list(by_lr) == ["optimizer.lr=0.01", "optimizer.lr=0.1"]  # numeric order
    assert [len(v) for v in by_lr.values()] == [3, 2]


def test_task_metrics_prefers_normalized_and_filters(tmp_path: Path) -> None:
    a = cmp.load_run(write_ramp_run(tmp_path / "a", base_config(), {"lane_keep": 1.0, "merge": 0.5}))
    b = cmp.load_run(
        write_ramp_run(tmp_path / "b", base_config(), {"MinAtar/Breakout-v1": 3.0}, normalized=False)
    )
    assert cmp.task_metrics([a, b]) == {
        "MinAtar/Breakout-v1": "eval/MinAtar/Breakout-v1/return",
        "lane_keep": "eval/lane_keep/normalized",
        "merge": "eval/merge/normalized",
    }
    assert cmp.task_metrics([a, b], tasks=["merge", "unknown"]) == {"merge": "eval/merge/normalized"}


def test_curves_interpolated_on_common_grid(tmp_path: Path) -> None:
    rows1 = [
        {"env_steps": s, "step": s, "time": 0.0, "eval/t/normalized": v}
        for s, v in [(0, 0), (100, 1), (200, 2)]
    ]
    rows2 = [
        {"env_steps": s, "step": s, "time": 0.0, "eval/t/normalized": v}
        for s, v in [(0, 0), (150, 3), (300, 6)]
    ]
    runs = [cmp.load_run(write_run(tmp_path / n, base_config(), r)) for n, r in (("1", rows1), ("2", rows2))]
    grid = cmp.make_grid(r.series("eval/t/normalized")[0] for r in runs)
    np.testing.assert_array_equal(grid, [0, 100, 150, 200, 300])
    matrix = cmp.curves_on_grid(runs, "eval/t/normalized", grid)
    np.testing.assert_allclose(matrix, [[0, 1, 1.5, 2, np.nan], [0, 2, 3, 4, 6]])  # no extrapolation
    curves = cmp.learning_curves({"g1": runs[:1], "g2": runs[1:]}, "eval/t/normalized", n_boot=100)
    np.testing.assert_array_equal(curves["grid"], grid)  # shared by the groups
    np.testing.assert_allclose(curves["groups"]["g2"]["mean"], [0, 2, 3, 4, 6])
    both = cmp.learning_curves({"g": runs}, "eval/t/normalized", n_boot=100)["groups"]["g"]
    np.testing.assert_allclose(both["mean"], [0, 1.5, 2.25, 3, 6])
    np.testing.assert_allclose(both["low"][:4], [0, 1, 1.5, 2])
    np.testing.assert_allclose(both["high"][:4], [0, 2, 3, 4])
    np.testing.assert_allclose(cmp.make_grid([np.arange(1000)], n_points=11), np.linspace(0, 999, 11))


def test_steps_to_threshold(tmp_path: Path) -> None:
    runs = [
        cmp.load_run(write_ramp_run(tmp_path / str(i), base_config(), {"t": f}))
        for i, f in enumerate([0.2, 0.5, 0.9])
    ]
    metric = "eval/t/normalized"
    assert [cmp.steps_to_threshold(r, metric, 0.5) for r in runs] == [np.inf, 4000.0, 3000.0]
    assert cmp.threshold_summary(runs, metric, 0.5) == {"steps_to_threshold": 4000.0, "n_reached": 2}
    assert cmp.threshold_summary(runs, metric, 0.85) == {"steps_to_threshold": None, "n_reached": 1}


def test_compare_runs_tables_on_2x3_sweep(sweep: Path) -> None:
    summary = cmp.compare_runs([sweep], by=["optimizer.name"], threshold=0.5, **BOOT).summary
    assert [(g["label"], g["n_runs"]) for g in summary["groups"]] == [(ADAM, 3), (SGD, 3)]
    assert summary["tasks"] == {"lane_keep": "eval/lane_keep/normalized", "merge": "eval/merge/normalized"}
    assert [t["name"] for t in summary["tables"]] == [
        "eval/mean_normalized",
        "lane_keep",
        "merge",
        "all tasks",
    ]
    expected = {  # (table, group): (iqm, mean, median); n = 3 runs per task, so the per-task IQM is the mean
        ("lane_keep", ADAM): (1.6 / 3, 1.6 / 3, 0.5),
        ("lane_keep", SGD): (0.75 / 3, 0.75 / 3, 0.3),
        ("merge", ADAM): (2.3 / 3, 2.3 / 3, 0.6),
        ("eval/mean_normalized", ADAM): (1.95 / 3, 1.95 / 3, 0.55),  # per-run means 0.3, 0.55, 1.1
        ("all tasks", ADAM): (0.6, 3.9 / 6, 0.55),  # 0.2 0.4 0.5 0.6 0.9 1.3 -> IQM of the middle four
        ("all tasks", SGD): (0.2125, 1.2 / 6, 0.225),  # 0 0.1 0.2 0.25 0.3 0.35
    }
    for (table, group), (iqm, mean, median) in expected.items():
        row = _table(summary, table)["rows"][group]
        assert (row["iqm"], row["mean"], row["median"]) == pytest.approx((iqm, mean, median))
        assert row["n_runs"] == 3
        for name in ("iqm", "mean", "median"):
            assert row[f"{name}_ci"][0] <= row[name] <= row[f"{name}_ci"][1]
    lane_keep = _table(summary, "lane_keep")["rows"]
    assert (lane_keep[ADAM]["steps_to_threshold"], lane_keep[ADAM]["n_reached"]) == (4000.0, 2)
    assert (lane_keep[SGD]["steps_to_threshold"], lane_keep[SGD]["n_reached"]) == (None, 0)
    assert _table(summary, "eval/mean_normalized")["rows"][ADAM]["steps_to_threshold"] == 4000.0
    assert lane_keep[ADAM]["auc"] == pytest.approx(np.mean(SWEEP_FINALS["adam"]["lane_keep"]) * 0.5)
    assert _table(summary, "lane_keep")["rows"][ADAM]["final_scores"] == [[0.2], [0.5], [0.9]]


def test_failed_runs_reported_and_skipped(sweep: Path) -> None:
    comparison = cmp.compare_runs([sweep], by=["optimizer.name"], **BOOT)
    summary = comparison.summary
    assert summary["n_runs"] == 8
    failed = {Path(f["path"]).name: f for f in summary["failed"]}
    assert set(failed) == {"6", "7"}
    assert failed["6"]["error"].startswith("RuntimeError: CUDA out of memory")
    assert failed["7"]["group"] == SGD
    assert all(str(sweep.resolve() / "6") not in g["runs"] for g in summary["groups"])
    assert _table(summary, "lane_keep")["rows"][ADAM]["mean"] == pytest.approx(1.6 / 3)  # the 5.0s stay out
    md = cmp.render_markdown(summary)
    assert "## Failed runs (skipped)" in md and "CUDA out of memory \\| while sampling" in md
    # each group's failed runs beside its scores (a stability sweep's diverged seeds were only listed below)
    rows = _table(summary, "lane_keep")["rows"]
    assert rows[ADAM]["n_failed"] == 1 and rows[SGD]["n_failed"] == 1
    assert f"| {ADAM} | 3 (+1 failed) |" in md
    # a group whose runs all failed keeps its row (a stability sweep's optimizer whose every seed diverged vanished)
    write_failed_run(sweep / "9", base_config(optimizer={"name": "lion"}), "DivergenceError: |Q| > 1e6")
    summary = cmp.compare_runs([sweep], by=["optimizer.name"], **BOOT).summary
    assert _table(summary, "lane_keep")["failed_only"] == {"optimizer.name=lion": 1}
    assert "| optimizer.name=lion | 0 (+1 failed) | - | - |" in cmp.render_markdown(summary)
    assert "into 2 group(s) and 1 whose runs all failed;" in cmp.render_markdown(summary)


def test_failed_runs_scored_as_their_last_evaluation_or_a_given_score(sweep: Path, capsys) -> None:
    """--failed last / <score>: a run that diverged counts in its group's scores (a stability sweep that leaves its
    diverged seeds out flatters the setting that diverges); one that failed before logging (bad input) never."""
    last = cmp.compare_runs([sweep], by=["optimizer.name"], failed="last", **BOOT).summary
    run6 = cmp.Run(sweep / "6", rows=[json.loads(x) for x in (sweep / "6" / "metrics.jsonl").read_text().splitlines()])
    last_value = run6.final("eval/lane_keep/normalized")
    assert last_value is not None
    assert sorted(_table(last, "lane_keep")["rows"][ADAM]["final_scores"]) == sorted([[0.2], [0.5], [0.9],
                                                                                      [last_value]])
    assert [Path(f["path"]).name for f in last["failed"]] == ["7"]  # no rows: left out, as before
    assert [Path(f["path"]).name for f in last["failed_scored"]] == ["6"] and last["failed_runs"] == "last"
    assert _table(last, "lane_keep")["rows"][ADAM]["n_failed"] == 1
    assert _table(last, "lane_keep")["rows"][ADAM]["n_incomplete"] == 0 and not last["incomplete"]  # failed, not both
    md = cmp.render_markdown(last)
    assert "## Failed runs (scored, included)" in md and "scores its last evaluation before it failed" in md
    assert f"| {ADAM} | 4 (1 failed, scored) |" in md
    zero = cmp.compare_runs([sweep], by=["optimizer.name"], failed=0, **BOOT).summary
    assert _table(zero, "lane_keep")["rows"][ADAM]["mean"] == pytest.approx((0.2 + 0.5 + 0.9 + 0.0) / 4)
    assert _table(zero, "lane_keep")["rows"][ADAM]["n_reached"] <= 1  # never reached after it stopped
    assert "A failed run scores 0.0 on every metric" in cmp.render_markdown(zero)
    # diverged before its first evaluation: --failed 0 scores it (no "left out" warning), --failed last cannot
    write_run(sweep / "10", base_config(seed=4, optimizer={"name": "adam", "lr": 0.001}, experiment_name="mtl_adam"),
              [{"env_steps": 512, "train/td_loss": float("nan")}], {"status": "failed", "error": "DivergenceError"})
    early = cmp.compare_runs([sweep], by=["optimizer.name"], failed=0, **BOOT).summary
    assert _table(early, "lane_keep")["rows"][ADAM]["final_scores"][-2:] == [[0.0], [0.0]]
    assert not any("10: " in w for w in early["warnings"]), early["warnings"]
    late = cmp.compare_runs([sweep], by=["optimizer.name"], failed="last", **BOOT).summary
    assert any("10: failed before its first evaluation: --failed last has no score for it" in w
               for w in late["warnings"])
    assert f"| {ADAM} | 4 (1 failed, scored) (+1 failed) |" in cmp.render_markdown(late)
    assert [Path(f["path"]).name for f in late["failed_scored"]] == ["6"]  # 10 has no score: counted as left out
    assert sorted(Path(f["path"]).name for f in late["failed"]) == ["10", "7"]
    (sweep / "10" / "summary.json").unlink()
    (sweep / "10" / "metrics.jsonl").unlink()
    with pytest.raises(ValueError, match=r"--failed nope: expected exclude, last or a finite number"):
        cmp.compare_runs([sweep], by=["optimizer.name"], failed="nope", **BOOT)
    out = sweep.parent / "cmp_failed"
    assert _script().main([str(sweep), "--by", "optimizer.name", "--failed", "0", "--no-plots", "--n-boot", "50",
                           "--out", str(out)]) == 0
    assert "2 failed (1 scored as 0.0)" in capsys.readouterr().out


def test_non_finite_evaluations_are_left_out_with_a_warning(tmp_path: Path) -> None:
    rows = [{"env_steps": 1000, "eval/lane_keep/normalized": 0.5}, {"env_steps": 2000, "eval/lane_keep/normalized": 0.7},
            {"env_steps": 3000, "eval/lane_keep/normalized": float("nan")}]
    write_run(tmp_path / "r", base_config(), rows, {"status": "completed"})
    summary = cmp.compare_runs([tmp_path / "r"], metric=None, **BOOT).summary
    assert [row["final_scores"] for row in _table(summary, "lane_keep")["rows"].values()] == [[[0.7]]]
    assert any("non-finite evaluations left out" in w and "eval/lane_keep/normalized x1" in w
               for w in summary["warnings"])
    assert any(w.endswith("1 run: its CIs are that run's value, not intervals (several seeds measure the spread)")
               for w in summary["warnings"])


def test_incomplete_runs_included_or_skipped(sweep: Path) -> None:
    rows = [r for r in ramp_rows({"lane_keep": 0.7, "merge": 0.7}) if r["env_steps"] <= 3000]  # still running
    write_run(sweep / "8", base_config(optimizer={"name": "sgd"}), rows)
    summary = cmp.compare_runs([sweep], by=["optimizer.name"], **BOOT).summary
    row = _table(summary, "lane_keep")["rows"][SGD]
    assert (row["n_runs"], row["n_incomplete"]) == (4, 1)
    assert row["final_scores"][-1] == [pytest.approx(0.525)]  # last eval value: 0.7 * 0.75
    assert [Path(p).name for p in summary["incomplete"]] == ["8"]
    skipped = cmp.compare_runs([sweep], by=["optimizer.name"], skip_incomplete=True, **BOOT).summary
    assert _table(skipped, "lane_keep")["rows"][SGD]["n_runs"] == 3
    assert [Path(p).name for p in skipped["skipped_incomplete"]] == ["8"]


def test_report_without_matplotlib(sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now raises ImportError
    comparison = cmp.compare_runs([sweep], by=["optimizer.name"], **BOOT)
    written = cmp.write_report(comparison, tmp_path / "out")
    assert sorted(p.name for p in written) == ["summary.json", "summary.md"]
    assert "Plots skipped: matplotlib is not installed" in (tmp_path / "out" / "summary.md").read_text()
    assert "matplotlib" in json.loads((tmp_path / "out" / "summary.json").read_text())["plots_skipped"]


def test_script_end_to_end(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(sweep),
            "--by",
            "optimizer.name",
            "--out",
            str(out),
            "--n-boot",
            "200",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "curves_eval_mean_normalized.png",
        "curves_lane_keep.png",
        "curves_merge.png",
        "performance_profiles.png",
    ]
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["plots"]) == pngs
    assert _table(summary, "all tasks")["rows"][ADAM]["iqm"] == pytest.approx(0.6)
    assert len(summary["failed"]) == 2
    md = (out / "summary.md").read_text()
    for text in (
        "## Task `lane_keep`",
        "| optimizer.name=adam | 3 (+1 failed) |",
        "not reached (0/3)",
        "![curves_merge]",
        "ValueError: bad config",
    ):
        assert text in md


def test_script_in_process_grouping_and_tasks(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "o"
    argv = [
        str(sweep),
        "--by",
        "optimizer.name,transfer.mode",
        "--tasks",
        "merge",
        "--out",
        str(out),
        "--n-boot",
        "100",
        "--no-plots",
        "--threshold",
        "0.18",
    ]
    assert _script().main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [g["label"] for g in summary["groups"]] == [
        f"{ADAM}, transfer.mode=none",
        f"{SGD}, transfer.mode=none",
    ]
    assert [t["name"] for t in summary["tables"]] == ["eval/mean_normalized", "merge"]
    merge = _table(summary, "merge")["rows"][f"{SGD}, transfer.mode=none"]
    assert (merge["steps_to_threshold"], merge["n_reached"]) == (
        4000.0,
        2,
    )  # finals 0, .2, .25: never, 4000, 3000
    assert summary["plots"] == [] and not list(out.glob("*.png"))
    assert "2 failed" in capsys.readouterr().out


def test_script_ci_flag_sets_the_interval_coverage(sweep: Path, tmp_path: Path) -> None:
    """--ci 0.5: the summary records 0.5, the tables say 50% CI, and the intervals are narrower than the default
    95% ones on the same resamples."""
    out = tmp_path / "o"
    argv = [str(sweep), "--by", "optimizer.name", "--out", str(out), "--n-boot", "50", "--no-plots", "--ci", "0.5"]
    assert _script().main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ci"] == 0.5
    assert "IQM [50% CI]" in (out / "summary.md").read_text()
    wide = cmp.compare_runs([sweep], by=["optimizer.name"], n_boot=50, seed=0).summary
    assert wide["ci"] == 0.95
    narrow_ci = _table(summary, "lane_keep")["rows"][ADAM]["mean_ci"]
    wide_ci = _table(wide, "lane_keep")["rows"][ADAM]["mean_ci"]
    assert wide_ci[0] < narrow_ci[0] <= narrow_ci[1] < wide_ci[1]


def test_script_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script = _script()
    assert script.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert script.main([str(empty), "--out", str(tmp_path / "o"), "--no-plots"]) == 2
    assert f"compare.py: error: no run directory (metrics.jsonl, or summary.json with a status) at or below {empty}" \
        in capsys.readouterr().err and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exc:
        script.main(["--help"])
    assert exc.value.code == 0 and "--by" in capsys.readouterr().out


def test_train_minutes_are_the_median_of_each_runs_last_train_seconds(tmp_path: Path) -> None:
    """The table's `train min`: per group, the median over runs of the last logged `time/train_seconds` (the
    evaluation callback logs training seconds with every evaluation); '-' for runs that never logged it."""
    for i, secs in enumerate((120.0, 300.0, 600.0)):
        rows = ramp_rows({"lane_keep": 0.9})
        evals = [r for r in rows if "eval/lane_keep/normalized" in r]
        for k, r in enumerate(evals, start=1):  # training seconds grow with every evaluation, to `secs`
            r["time/train_seconds"] = secs * k / len(evals)
        write_run(tmp_path / "timed" / str(i), base_config(seed=i, experiment_name="timed"), rows,
                  {"status": "completed"})
    write_run(tmp_path / "untimed" / "0", base_config(experiment_name="untimed"), ramp_rows({"lane_keep": 0.9}),
              {"status": "completed"})
    comparison = cmp.compare_runs([tmp_path], **BOOT)
    rows = _table(comparison.summary, "lane_keep")["rows"]
    assert rows["experiment_name=timed"]["train_minutes"] == pytest.approx(5.0)  # 120, 300, 600 s: median 300 s
    assert rows["experiment_name=untimed"]["train_minutes"] is None
    md = cmp.render_markdown(comparison.summary)
    assert "| 5.0 |" in md and "train min |" in md


def test_task_steps_place_a_multi_task_runs_task_metrics_at_its_env_steps_on_that_task(tmp_path: Path) -> None:
    """With task_steps (`--task-steps`), a multi-task run's eval/<task>/... is placed at time/<task>/env_steps,
    its env steps on that task (here a quarter of the summed steps for `a`, three quarters for `b`), so env steps to
    threshold, AUC and curves line up with single-task runs; without it, at the summed env steps; single-task runs
    (no per-task count) keep env_steps; the report says which."""
    rows = ramp_rows({"a": 1.0, "b": 1.0})
    for r in rows:
        if "eval/a/normalized" in r:
            r["time/a/env_steps"], r["time/b/env_steps"] = r["env_steps"] / 4, r["env_steps"] * 3 / 4
    write_run(tmp_path / "mtl", base_config(experiment_name="mtl"), rows, {"status": "completed"})
    write_run(tmp_path / "single", base_config(experiment_name="single"), ramp_rows({"a": 1.0}),
              {"status": "completed"})
    summed = {r.path.name: r for r in cmp.load_runs([tmp_path])}
    per_task = {r.path.name: r for r in cmp.load_runs([tmp_path])}
    for r in per_task.values():
        r.task_steps = True
    first = cmp.steps_to_threshold(summed["mtl"], "eval/a/normalized", 0.5)
    assert cmp.steps_to_threshold(per_task["mtl"], "eval/a/normalized", 0.5) == first / 4
    assert cmp.steps_to_threshold(per_task["mtl"], "eval/b/normalized", 0.5) == first * 3 / 4
    assert np.array_equal(per_task["single"].series("eval/a/normalized")[0], summed["single"].series(
        "eval/a/normalized")[0])
    comparison = cmp.compare_runs([tmp_path], task_steps=True, **BOOT)
    row = _table(comparison.summary, "a")["rows"]["experiment_name=mtl"]
    assert row["steps_to_threshold"] == cmp.steps_to_threshold(per_task["mtl"], "eval/a/normalized", 0.9)
    assert "the run's env steps on that task" in cmp.render_markdown(comparison.summary)
    assert "the run's env steps on that task" not in cmp.render_markdown(cmp.compare_runs([tmp_path],
                                                                                           **BOOT).summary)
    out = tmp_path.parent / f"{tmp_path.name}_report"
    assert _script().main([str(tmp_path), "--task-steps", "--no-plots", "--n-boot", "100", "--out", str(out)]) == 0
    assert "the run's env steps on that task" in (out / "summary.md").read_text()


def test_window_averages_each_runs_last_evaluations(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--window N: a run's final score is the mean of its last N evaluations (a score that swings between
    evaluations, as MinAtar Freeway's does, no longer hangs on the last one); 1 keeps the last value; the report says
    which; N < 1 is refused before any run is read."""
    swings = [[2.0, 8.0, 4.0, 6.0, 2.0], [6.0, 2.0, 8.0, 4.0, 10.0]]
    for i, values in enumerate(swings):
        rows = [{"env_steps": 1000 * (k + 1), "eval/a/return": v} for k, v in enumerate(values)]
        write_run(tmp_path / str(i), base_config(seed=i, experiment_name="swing"), rows, {"status": "completed"})
    last = cmp.compare_runs([tmp_path], metric=None, **BOOT).summary
    three = cmp.compare_runs([tmp_path], metric=None, window=3, **BOOT).summary
    assert _table(last, "a")["rows"]["experiment_name=swing"]["final_scores"] == [[2.0], [10.0]]
    assert _table(three, "a")["rows"]["experiment_name=swing"]["final_scores"] == [[4.0], [22.0 / 3]]
    everything = cmp.compare_runs([tmp_path], metric=None, window=50, **BOOT).summary  # more than the run has
    assert _table(everything, "a")["rows"]["experiment_name=swing"]["final_scores"] == [[4.4], [6.0]]
    assert "mean of each run's last 3 eval values" in cmp.render_markdown(three)
    assert "last eval value of each run" in cmp.render_markdown(last)
    assert _script().main([str(tmp_path), "--window", "0", "--no-plots"]) == 2
    assert "--window=0" in capsys.readouterr().err


def test_a_grouping_key_no_run_has_is_refused_naming_the_keys_that_differ(tmp_path: Path, capsys) -> None:
    """--by with a typo put every run in one `<missing>` group; it is refused, naming the keys that tell the runs
    apart (not per-run paths, derived seeds or the siblings of a differing _target_)."""
    runs = []
    for i, (target, lr) in enumerate([("torch.optim.Adam", 0.01), ("torch.optim.SGD", 0.1)]):
        cfg = base_config(seed=i, optimizer={"_target_": target, "lr": lr}, paths={"output_dir": f"out/{i}"},
                          compression={"seed": i}, ckpt_path=[None, f"out/{i}/checkpoints/last.ckpt"][i])
        runs.append(cmp.load_run(write_ramp_run(tmp_path / str(i), cfg, {"a": 1.0})))
    with pytest.raises(ValueError, match=r"--by optimiser: no run's config.yaml has this key; keys whose values "
                                         r"differ between these runs: optimizer._target_, seed$"):
        cmp.group_runs(runs, ["optimiser"])
    assert list(cmp.group_runs(runs, ["optimizer"])) == ["optimizer=Adam", "optimizer=SGD"]
    assert _script().main([str(tmp_path), "--by", "optimiser", "--out", str(tmp_path / "o")]) == 2
    assert "--by optimiser: no run's config.yaml has this key" in capsys.readouterr().err


@pytest.mark.parametrize("report", ["outcomes", "robustness"])
def test_reports_that_play_episodes_refuse_a_missing_key_before_loading_any_run(tmp_path: Path, report) -> None:
    """episode_report / robustness check --by on the saved configs before any checkpoint is loaded or played (the
    checkpoint here is not loadable: reaching it would fail otherwise)."""
    from mtdqn.evaluation.outcomes import outcome_report
    from mtdqn.evaluation.robustness import robustness_report

    for i in range(2):
        run = write_ramp_run(tmp_path / str(i), base_config(seed=i), {"a": 1.0})
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_text("not a checkpoint")
    make = outcome_report if report == "outcomes" else robustness_report
    with pytest.raises(ValueError, match=r"--by transfer.mod: no run's config.yaml has this key; .*: seed"):
        make([tmp_path], by=["transfer.mod"])


def test_returns_are_timed_at_their_own_threshold_not_the_normalized_one(tmp_path: Path) -> None:
    """A CartPole-like run scored by return reached "0.9" at its first eval above 0.9 (a return of 9.5);
    returns are timed only at --return-threshold."""
    write_run(tmp_path / "cp", base_config(tasks=["CartPole-v1"]), ramp_rows({"CartPole-v1": 4.0}, normalized=False),
              {"status": "completed"})
    write_run(tmp_path / "lk", base_config(tasks=["lane_keep"]), ramp_rows({"lane_keep": 1.0}), {"status": "completed"})
    plain = cmp.compare_runs([tmp_path], by=["tasks"], **BOOT).summary
    cart = _table(plain, "CartPole-v1")
    assert cart["threshold"] is None and "steps_to_threshold" not in cart["rows"]["tasks=[\"CartPole-v1\"]"]
    assert _table(plain, "lane_keep")["rows"]['tasks=["lane_keep"]']["steps_to_threshold"] == 4000.0
    md = cmp.render_markdown(plain)
    assert "## Task `CartPole-v1` (`eval/CartPole-v1/return`)" in md
    timed = cmp.compare_runs([tmp_path], by=["tasks"], return_threshold=150.0, **BOOT).summary
    assert _table(timed, "CartPole-v1")["rows"]['tasks=["CartPole-v1"]']["steps_to_threshold"] == 2000.0  # 200
    assert "env steps to 150" in cmp.render_markdown(timed)


def test_a_metric_no_run_logged_is_refused_and_empty_or_uneven_runs_are_named(tmp_path: Path, capsys) -> None:
    write_run(tmp_path / "a", base_config(seed=0), ramp_rows({"lane_keep": 1.0}), {"status": "completed"})
    write_run(tmp_path / "b", base_config(seed=1), ramp_rows({"lane_keep": 0.8}, steps=(0, 100, 200, 300, 400)),
              {"status": "completed"})
    empty = write_run(tmp_path / "c", base_config(seed=2), [])
    with pytest.raises(ValueError, match=r"--metric eval/nope: no run logged it; their evaluation metrics: "
                                         r"eval/lane_keep/normalized"):
        cmp.compare_runs([tmp_path], metric="eval/nope", **BOOT)
    with pytest.raises(ValueError, match=r"--points=0"):
        cmp.compare_runs([tmp_path], n_points=0, **BOOT)
    warnings = cmp.compare_runs([tmp_path], **BOOT).summary["warnings"]
    assert f"{empty.resolve()}: no evaluation logged; left out of every table" in warnings
    assert any("its runs' last evaluations lie between 400 and 4,000 env steps" in w for w in warnings)
    assert _script().main([str(empty), "--out", str(tmp_path / "o"), "--no-plots"]) == 1  # no table: not a success
    assert "no table has a run" in capsys.readouterr().err


def test_a_report_rewritten_into_its_folder_drops_the_earlier_reports_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    write_run(tmp_path / "runs" / "a", base_config(tasks=["lane_keep"]), ramp_rows({"lane_keep": 1.0}),
              {"status": "completed"})
    write_run(tmp_path / "runs" / "b", base_config(tasks=["merge"]), ramp_rows({"merge": 1.0}), {"status": "completed"})
    out = tmp_path / "out"
    assert _script().main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert (out / "curves_merge.png").is_file()
    assert _script().main([str(tmp_path / "runs" / "a"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["curves_eval_mean_normalized.png", "curves_lane_keep.png",
                                                        "performance_profiles.png"]


def test_one_run_whose_tasks_end_at_other_task_steps_is_no_uneven_group(tmp_path: Path) -> None:
    """--task-steps puts each task of a multi-task run on its own env steps: one run's tasks end apart, which is no
    group of runs of different lengths."""
    rows = ramp_rows({"a": 1.0, "b": 1.0})
    for r in rows:
        if "eval/a/normalized" in r:
            r["time/a/env_steps"], r["time/b/env_steps"] = r["env_steps"] * 0.2, r["env_steps"] * 0.8
    write_run(tmp_path / "mtl", base_config(tasks=["a", "b"]), rows, {"status": "completed"})
    warnings = cmp.compare_runs([tmp_path], task_steps=True, **BOOT).summary["warnings"]
    assert not [w for w in warnings if "last evaluations lie between" in w]


def test_runs_pooled_without_by_are_named_with_the_keys_that_differ(sweep: Path) -> None:
    """compare.py on an optimizer sweep without --by pooled adam's and sgd's runs under experiment_name as seeds of
    one setting, silently."""
    pooled = cmp.compare_runs([sweep], by=["transfer.mode"], **BOOT).summary["warnings"]
    (note,) = [w for w in pooled if "pooled as seeds of one setting" in w]
    assert "differ in experiment_name" in note and "mtl_adam (3 runs)" in note and "--by experiment_name" in note
    split = cmp.compare_runs([sweep], by=["experiment_name"], **BOOT).summary["warnings"]
    assert not any("pooled as seeds" in w for w in split)


def test_returns_of_different_tasks_are_not_averaged(tmp_path: Path) -> None:
    """classic_mtl (CartPole's and Acrobot's returns): the all-tasks table and the performance profile averaged
    the raw returns of the two tasks (-245.5); the missing normalized headline went unmentioned."""
    for seed in range(2):
        rows = ramp_rows({"CartPole-v1": 5.0, "Acrobot-v1": -1.0}, normalized=False)
        write_run(tmp_path / str(seed), base_config(seed=seed, tasks=["CartPole-v1", "Acrobot-v1"]), rows,
                  {"status": "completed"})
    summary = cmp.compare_runs([tmp_path], **BOOT).summary
    assert sorted(t["name"] for t in summary["tables"]) == ["Acrobot-v1", "CartPole-v1"]
    assert any("no all-tasks table or performance profile averages returns of different tasks" in w
               for w in summary["warnings"])
    assert any("no headline table: no run logged eval/mean_normalized" in w for w in summary["warnings"])
    assert cmp.compare_runs([tmp_path], **BOOT).profiles["groups"] == {}
