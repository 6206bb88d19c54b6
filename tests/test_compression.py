"""Compression end to end: the end-of-training callback, scripts/compress.py on a finished run, the report's
fields, and bad settings failing before any env step."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mtdqn.compression import REPORT_FIELDS
from mtdqn.train import train
from tests.helpers.config import compose_cfg

ROOT = Path(__file__).resolve().parents[1]
RUN = ["debug=smoke", "logger=jsonl", "callbacks.progress=null", "print_config=false",
       "+task_set.env_kwargs.max_episode_steps=40", "net.hidden=[32,32]"]
MULTI = ["task_set=driving", "model=mtdqn", "net=multihead"]
TINY_COMPRESSION = ["distill.hidden=[8,8]", "distill.steps=30", "prune.steps=2", "prune.finetune_steps=5",
                    "structured.finetune_steps=5", "data.rollout_fraction=0.1", "latency.calls=2",
                    "latency.rounds=2", "latency.warmup=1", "export.check_states=64"]
CHAINS = "compression.methods=[[distill,quantize],[prune],[structured],[fp16]]"


def _compress_script():
    spec = importlib.util.spec_from_file_location("compress_script", ROOT / "scripts" / "compress.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny single-task run (QNetwork) trained without compression."""
    out = tmp_path_factory.mktemp("run")
    assert train(compose_cfg(["task_set=lane_keep", *RUN], out))["status"] == "completed"
    return out


def _check_report(report: dict, out_dir: Path, names: list[str]) -> None:
    assert [e["name"] for e in report["policies"]] == names
    for e in report["policies"]:
        missing = [f for f in REPORT_FIELDS if f not in e]
        assert not missing, f"{e['name']} lacks {missing}"
        assert set(e["latency_ms"]) == {"1", "256"} and all(v > 0 for v in e["latency_ms"].values())
        assert e["file_bytes"] == (out_dir / e["name"] / "model.pt").stat().st_size
        assert e["export"]["torchscript"]["status"] == "ok"
        assert e["export"]["torchscript"]["action_agreement"] == 1.0
        assert e["export"]["onnx"]["status"] in ("ok", "skipped")
        for task, values in e["eval"].items():
            assert {"return", "return_std", "normalized"} <= set(values), task
    original = report["policies"][0]
    assert original["retention"] == 1.0 and original["params_ratio"] == 1.0
    for e in report["policies"][1:]:  # the report says, from the measurement, whether each method is faster
        assert any(n.startswith("unstructured sparsity:" if e["methods"][-1] == "prune" else f"{e['name']}:")
                   and "latency" in n for n in report["notes"])
    saved = json.loads((out_dir / "report.json").read_text())
    assert [e["name"] for e in saved["policies"]] == names
    md = (out_dir / "report.md").read_text()
    assert all(f"| {n} |" in md for n in names)
    assert (out_dir / "report.png").stat().st_size > 0


def test_end_of_training_callback_writes_the_report(tmp_path):
    overrides = [*MULTI, *RUN, "compression=default", CHAINS, *[f"compression.{o}" for o in TINY_COMPRESSION]]
    summary = train(compose_cfg(overrides, tmp_path))
    assert summary["status"] == "completed"
    report = json.loads((tmp_path / "compression" / "report.json").read_text())
    names = ["original", "distill", "distill+quantize", "prune", "structured", "fp16"]
    _check_report(report, tmp_path / "compression", names)
    by_name = {e["name"]: e for e in report["policies"]}
    assert by_name["distill"]["params"] < 0.2 * by_name["original"]["params"]
    assert by_name["distill"]["info"]["hidden"] == [8, 8]
    assert by_name["prune"]["nonzero_params"] < 0.5 * by_name["original"]["params"]
    assert by_name["structured"]["macs"] < 0.5 * by_name["original"]["macs"]
    assert by_name["distill+quantize"]["info"]["engine"] in ("x86", "fbgemm", "onednn", "qnnpack")
    assert by_name["fp16"]["file_bytes"] < 0.7 * by_name["original"]["file_bytes"]
    # same greedy episodes and seeds as the run's EvalCallback: the original's row is the run's final evaluation
    for task in ("lane_keep", "pedestrian", "traffic_light"):
        assert by_name["original"]["eval"][task]["return"] == pytest.approx(summary[f"eval/{task}/return"])
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["compression/distill/params"] == by_name["distill"]["params"]
    assert "compression/structured/latency_ms_b1" in saved


def test_compress_script_on_a_finished_run(finished_run, tmp_path):
    out = tmp_path / "report"
    report = _compress_script().main([str(finished_run), "--methods", "distill", "quantize", "--methods",
                                      "structured", "--out", str(out), *TINY_COMPRESSION])
    _check_report(report, out, ["original", "distill", "distill+quantize", "structured"])
    summary = json.loads((finished_run / "summary.json").read_text())
    original = report["policies"][0]
    assert original["eval"]["lane_keep"]["return"] == pytest.approx(summary["eval/lane_keep/return"])
    assert original["params"] == sum(
        p.numel() for k, p in _checkpoint_weights(finished_run).items() if k.startswith("q_net."))


def _checkpoint_weights(run: Path) -> dict:
    from mtdqn.callbacks.checkpoint import load_checkpoint

    return load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("compression.prune.sparsity=1.5", "compression.prune.sparsity=1.5 must be a number in [0, 1)"),
        ("compression.methods=[distill,zip]", "compression.methods: 'zip' is not one of"),
        ("compression.structured.keep_fraction=0", "compression.structured.keep_fraction=0 must be a number in (0, 1]"),
        ("compression.methods=[fp16,prune]", "trains after 'fp16'"),
        ("compression.eval.episodes=1.5", "compression.eval.episodes=1.5 must be an integer > 0"),
        ("compression.distill.steps=abc", "compression.distill.steps='abc' must be an integer > 0"),
    ],
)
def test_bad_settings_fail_before_any_env_step(tmp_path, monkeypatch, override, message):
    def no_env_step(*args, **kwargs):
        raise AssertionError("an env was stepped before the settings were checked")

    monkeypatch.setattr("mtdqn.collect.collector.Collector.step", no_env_step)
    with pytest.raises(ValueError) as err:
        train(compose_cfg([*MULTI, *RUN, "compression=default", override], tmp_path))
    assert message in str(err.value)
    assert not (tmp_path / "checkpoints").exists()


def test_script_rejects_bad_settings_before_loading_the_checkpoint(tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text("seed: 0\n")  # no checkpoint at all: the settings fail first
    script = _compress_script()
    monkeypatch.setattr(script, "load_run", lambda *a, **k: pytest.fail("loaded the run before validating"))
    with pytest.raises(ValueError, match=r"compression.methods: 'squash' is not one of"):
        script.main([str(tmp_path), "--methods", "squash"])
    with pytest.raises(ValueError, match=r"compression.prune.sparsity=1.0 must be a number in \[0, 1\)"):
        script.main([str(tmp_path), "--methods", "prune", "prune.sparsity=1.0"])
    for override, message in (("eval.episodes=1.5", "compression.eval.episodes=1.5 must be an integer > 0"),
                              ("prune.steps=2.5", "compression.prune.steps=2.5 must be an integer > 0"),
                              ("distill.steps=abc", "compression.distill.steps='abc' must be an integer > 0"),
                              ("distill.hidden=64", "compression.distill.hidden=64 must be a non-empty list")):
        with pytest.raises(ValueError) as err:
            script.main([str(tmp_path), "--methods", "quantize", override])
        assert message in str(err.value)
    with pytest.raises(ValueError, match="compression.distill.widths is not a setting"):
        script.main([str(tmp_path), "distill.widths=[8]"])


def test_script_names_a_missing_run_or_checkpoint_and_a_checkpoint_of_another_network(finished_run, tmp_path,
                                                                                       monkeypatch):
    """Ordinary mistakes end as one line naming the run or checkpoint (compress.py: error: ..., status 2), before
    any compression work, instead of a FileNotFoundError or a load_state_dict RuntimeError traceback."""
    import shutil

    script = _compress_script()
    monkeypatch.setattr(script, "run_compression", lambda *a, **k: pytest.fail("compressed despite the bad input"))
    quick = ["--methods", "quantize"]
    with pytest.raises(ValueError, match=r"RUN_DIR='.*nope' does not exist"):
        script.main([str(tmp_path / "nope"), *quick])
    failed = tmp_path / "failed"  # a run that ended before its first checkpoint: config.yaml, no checkpoints/
    failed.mkdir()
    shutil.copy(finished_run / "config.yaml", failed / "config.yaml")
    with pytest.raises(ValueError, match=r"has no checkpoints/last.ckpt: the run ended before its first checkpoint"):
        script.main([str(failed), *quick])
    with pytest.raises(ValueError, match=r"--ckpt='.*nope.ckpt' does not exist"):
        script.main([str(finished_run), "--ckpt", str(tmp_path / "nope.ckpt"), *quick])
    other = tmp_path / "other"  # the same checkpoint under a config.yaml whose network is narrower
    other.mkdir()
    (other / "config.yaml").write_text((finished_run / "config.yaml").read_text().replace(
        "hidden:\n  - 32\n  - 32", "hidden:\n  - 16\n  - 16"))
    assert "- 16" in (other / "config.yaml").read_text()
    with pytest.raises(ValueError) as err:
        script.main([str(other), "--ckpt", str(finished_run / "checkpoints" / "last.ckpt"), *quick])
    assert "last.ckpt': its weights do not fit the network of" in str(err.value)
    assert "net.hidden=[16, 16]" in str(err.value) and "\n" not in str(err.value)


def test_a_second_report_into_the_same_folder_replaces_the_first_policy_folders(finished_run, tmp_path,
                                                                                 monkeypatch):
    """A report into a folder that holds an earlier one leaves only its own policy folders beside it (the earlier
    prune/ used to stay beside a report.md that no longer listed it); other files stay; a run that fails midway
    leaves the earlier report whole."""
    script = _compress_script()
    out = tmp_path / "compression"
    quick = ["--out", str(out), "eval.episodes=2", *TINY_COMPRESSION]
    script.main([str(finished_run), "--methods", "prune", "--methods", "fp16", *quick])
    assert {p.name for p in out.iterdir()} == {"original", "prune", "fp16", "report.json", "report.md", "report.png"}
    (out / "notes.txt").write_text("mine")
    first = (out / "report.md").read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr("mtdqn.compression.report.measure_latency", interrupted)
        with pytest.raises(KeyboardInterrupt):
            script.main([str(finished_run), "--methods", "quantize", *quick])
    assert (out / "report.md").read_text() == first and (out / "prune" / "model.pt").is_file()

    report = script.main([str(finished_run), "--methods", "quantize", *quick])
    names = {"original", "quantize"}
    assert {e["name"] for e in report["policies"]} == names
    assert {p.name for p in out.iterdir()} == names | {"report.json", "report.md", "report.png", "notes.txt"}
    assert "| prune |" not in (out / "report.md").read_text()
    saved = json.loads((out / "report.json").read_text())
    for e in saved["policies"]:
        ts = e["export"]["torchscript"]
        assert ts["path"] == str(out / e["name"] / "model.ts") and Path(ts["path"]).is_file()


def test_a_run_still_running_is_warned_about_and_the_report_records_the_checkpoint(finished_run, tmp_path,
                                                                                    capsys):
    """A run whose summary.json says running: its last.ckpt is intermediate and the report would go into the live
    run's compression/ (silently, before); a warning says so, and report.json and report.md name the checkpoint
    and its env steps (a completed run's too, without a warning)."""
    import shutil

    live = tmp_path / "live"
    shutil.copytree(finished_run, live, ignore=shutil.ignore_patterns("compression"))
    (live / "summary.json").write_text(json.dumps({"status": "running"}))
    ckpt = live / "checkpoints" / "last.ckpt"
    steps = int(json.loads((finished_run / "summary.json").read_text())["time/env_steps"])
    report = _compress_script().main([str(live), "--methods", "quantize", "eval.episodes=2", *TINY_COMPRESSION])
    err = capsys.readouterr().err
    assert (f"compress.py: warning: RUN_DIR={str(live)!r} is still running (summary.json: status 'running'): "
            f"compressing its last checkpoint so far, {str(ckpt)!r}, saved at {steps:,} env steps, not the policy "
            f"of a completed run; the report goes into {str(live / 'compression')!r}") in err
    assert report["checkpoint"]["path"] == str(ckpt) and report["checkpoint"]["env_steps"] == steps
    assert report["checkpoint"]["run_status"] == "running"
    saved = json.loads((live / "compression" / "report.json").read_text())
    assert saved["checkpoint"] == report["checkpoint"] and "is still running" in saved["notes"][0]
    md = (live / "compression" / "report.md").read_text()
    assert f"Compressed: `{ckpt}`, at {steps:,} env steps (run status: running)." in md and "**Warning:**" in md

    done = _compress_script().main([str(finished_run), "--methods", "quantize", "--out", str(tmp_path / "done"),
                                    "eval.episodes=2", *TINY_COMPRESSION])
    assert "warning" not in capsys.readouterr().err
    assert done["checkpoint"]["run_status"] == "completed" and not done["checkpoint"]["warning"]
    assert "(run status: completed)." in (tmp_path / "done" / "report.md").read_text()


def test_script_errors_are_one_line_with_status_2(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "compress.py"), str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == f"compress.py: error: RUN_DIR={str(tmp_path / 'nope')!r} does not exist"


class _FakeRun:
    def __init__(self) -> None:
        self.summary: dict = {}
        self.logged: dict = {}

    def log(self, values: dict) -> None:
        self.logged.update(values)


class WandbLogger:  # the callback recognizes W&B loggers by class name, as EnvStepCheckpoint does
    def __init__(self) -> None:
        self.experiment = _FakeRun()


def test_report_numbers_go_to_the_wandb_summary(tmp_path):
    import matplotlib

    from mtdqn.callbacks.compression import CompressionCallback
    from mtdqn.compression.report import plot, summary_metrics

    matplotlib.use("Agg")
    callback = CompressionCallback(net=None, output_dir=str(tmp_path), methods=["distill"])
    entry = {"name": "original", "params": 10, "nonzero_params": 10, "file_bytes": 100, "macs": 8,
             "mean_normalized": 0.8, "mean_return": 5.0, "retention": 1.0, "size_ratio": 1.0,
             "latency_ms": {"1": 0.1}, "latency_ms_torchscript": {"1": 0.05}}
    callback.report = {"policies": [entry, {**entry, "name": "distill", "params": 2, "retention": 0.97,
                                            "file_bytes": 20, "size_ratio": 5.0}]}
    plot(callback.report, tmp_path / "report.png")
    callback.latest = summary_metrics(callback.report)
    logger = WandbLogger()
    callback.log_wandb(logger)
    run = logger.experiment
    assert run.summary["compression/distill/retention"] == 0.97
    assert run.summary["compression/distill/latency_ms_torchscript_b1"] == 0.05
    assert {"compression/report", "compression/table"} <= set(run.logged)


def test_compress_a_convolutional_policy(tmp_path):
    """A tiny `+experiment=minatar_dqn` run (ConvEncoder + MLP): every method keeps the encoder and compresses
    the MLP; the reported multiply-adds include the convolution's (weight size x output positions)."""
    pytest.importorskip("minatar", reason="MinAtar ids need the optional extra .[minatar]")
    run = tmp_path / "run"
    tiny = ["data.total_env_steps=600", "data.learning_starts=200", "data.env_steps_per_round=64",
            "callbacks.eval.every_env_steps=300", "callbacks.eval.episodes=2", "callbacks.checkpoint.every_env_steps=300",
            "logger=jsonl", "callbacks.progress=null", "print_config=false", "net.hidden=[32]"]
    assert train(compose_cfg(["+experiment=minatar_dqn", *tiny], run))["status"] == "completed"
    out = tmp_path / "report"
    report = _compress_script().main([str(run), "--methods", "distill", "quantize", "--methods", "prune",
                                      "--methods", "structured", "--methods", "fp16", "--out", str(out),
                                      *TINY_COMPRESSION, "eval.episodes=2"])
    _check_report(report, out, ["original", "distill", "distill+quantize", "prune", "structured", "fp16"])
    conv_macs = 16 * 4 * 3 * 3 * 8 * 8  # 16 channels of 3x3x4 weights at 8x8 output positions
    by_name = {e["name"]: e for e in report["policies"]}
    assert by_name["original"]["macs"] == conv_macs + 16 * 8 * 8 * 32 + 32 * 3
    assert by_name["distill"]["macs"] == conv_macs + 16 * 8 * 8 * 8 + 8 * 8 + 8 * 3  # distill.hidden=[8,8]


def test_the_original_row_repeats_an_epsilon_greedy_final_evaluation(tmp_path):
    """A run evaluated with callbacks.eval.epsilon (Atari's 0.05) was compressed and evaluated greedily: the original
    policy's row did not repeat the run's final evaluation (and a greedy Breakout policy stalls to the time limit)."""
    overrides = [*MULTI, *RUN, "compression=default", "compression.methods=[[fp16]]", "callbacks.eval.epsilon=0.5",
                 *[f"compression.{o}" for o in TINY_COMPRESSION]]
    summary = train(compose_cfg(overrides, tmp_path))
    report = json.loads((tmp_path / "compression" / "report.json").read_text())
    original = report["policies"][0]
    for task in ("lane_keep", "pedestrian", "traffic_light"):
        assert original["eval"][task]["return"] == pytest.approx(summary[f"eval/{task}/return"])
