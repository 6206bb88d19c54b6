"""Compress a trained policy with every configured chain of methods and report what each one costs in return.

For the original and each compressed policy: parameters, non-zero parameters, bytes of the saved file, multiply-adds
per forward (dense and non-zero), CPU latency at each batch size, greedy return and normalized score per task on
the same fixed seeds, retention = compressed / original, and the TorchScript / ONNX export checks. Written as
report.json, report.md and report.png (normalized score against file size) into the output folder, which then holds
this report's policy folders only: those of an earlier report into the same folder are replaced or removed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtdqn.compression.config import METHODS, TRAINED, CompressionSettings, chain_name
from mtdqn.compression.data import (
    StatePool,
    concat_pools,
    fixed_batch,
    pool_from_observations,
    q_values,
    rollout_pool,
)
from mtdqn.compression.distill import distill
from mtdqn.compression.export import export_onnx, export_torchscript
from mtdqn.compression.measure import count_macs, count_params, file_bytes, measure_latency
from mtdqn.compression.policy import NetBuilder, QPolicy, task_policy
from mtdqn.compression.prune import iterative_prune, structured
from mtdqn.compression.quantize import CASTS, QuantizationUnavailable, cast, quantize_int8
from mtdqn.evaluation.episodes import epsilon_greedy, run_episodes
from mtdqn.types import TaskSpec

log = logging.getLogger("mtdqn")
EnvFactory = Callable[..., Any]
REPORT_FILES = ("report.json", "report.md", "report.png")
STAGE = ".partial"  # the report is written here, inside the output folder, then moved in when complete
TS_SUFFIX = "@torchscript"
GAIN = 0.95  # a latency counts as a gain below 95% of the original's (timing noise on a shared CPU)
REPORT_FIELDS = ("name", "methods", "params", "nonzero_params", "file_bytes", "macs", "macs_nonzero", "latency_ms", "latency_ms_torchscript",
                 "eval", "mean_normalized", "mean_return", "retention", "retention_per_task", "params_ratio",
                 "size_ratio", "speedup", "speedup_torchscript", "export", "info")


def build_pool(policy: QPolicy, env_factories: Sequence[EnvFactory], replay_obs: Sequence[Tensor],
               obs_width: int, settings: CompressionSettings) -> StatePool:
    """Replay states (at most data.max_states) plus teacher rollouts adding data.rollout_fraction as many states."""
    g = torch.Generator().manual_seed(settings.seed)
    replay = pool_from_observations(replay_obs, obs_width, settings.data.max_states, g)
    per_task = round(settings.data.rollout_fraction * len(replay) / max(len(env_factories), 1))
    if per_task == 0:
        return replay
    rollouts = rollout_pool(policy, env_factories, obs_width, per_task, settings.data.rollout_epsilon,
                            settings.data.rollout_envs, settings.seed + 777)
    return concat_pools(replay, rollouts)


def apply_method(method: str, policy: QPolicy, pool: StatePool, teacher_q: Tensor | None, builder: NetBuilder,
                 settings: CompressionSettings) -> tuple[QPolicy, dict]:
    """One compression method applied to `policy` (whose Q-values on the pool are `teacher_q`)."""
    epochs = settings.data.max_epochs
    if method == "distill":
        return distill(policy, teacher_q, pool, builder, settings.distill, settings.seed, max_epochs=epochs)
    if method == "prune":
        pruned, info = iterative_prune(policy, pool, teacher_q, settings.prune, settings.seed, max_epochs=epochs)
        info.pop("masks")
        return pruned, info
    if method == "structured":
        return structured(policy, pool, teacher_q, settings.structured, settings.seed, max_epochs=epochs)
    if method == "quantize":
        return quantize_int8(policy, settings.quantize)
    if method in CASTS:
        return cast(policy, method)
    raise ValueError(f"compression.methods: {method!r} is unknown")


def compress_chains(original: QPolicy, pool: StatePool, builder: NetBuilder, settings: CompressionSettings
                    ) -> tuple[dict[str, tuple[QPolicy, list[str], dict]], list[str]]:
    """Every prefix of every chain, each computed once: name -> (policy, methods, info); plus skip messages."""
    policies: dict[str, tuple[QPolicy, list[str], dict]] = {"original": (original, [], {})}
    teacher_qs: dict[str, Tensor] = {}
    skipped: list[str] = []
    for chain in settings.methods:
        current = "original"
        for k, method in enumerate(chain):
            name = chain_name(chain[: k + 1])
            if name not in policies:
                source = policies[current][0]
                if method in TRAINED and current not in teacher_qs:
                    if len(pool) == 0:
                        raise ValueError(f"compression.methods: {method!r} trains on replay states, but the "
                                         "run's replay buffers are empty")
                    teacher_qs[current] = q_values(source, pool)
                t0 = time.perf_counter()
                log.info("compression: %s ...", name)
                try:
                    policy, info = apply_method(method, source, pool, teacher_qs.get(current), builder, settings)
                except QuantizationUnavailable as exc:
                    skipped.append(f"{name}: skipped, {exc}")
                    log.warning("compression: %s skipped: %s", name, exc)
                    break
                info["seconds"] = round(time.perf_counter() - t0, 2)
                policies[name] = (policy.eval(), list(chain[: k + 1]), info)
            current = name
    return policies, skipped


def evaluate(policy: QPolicy, tasks: Sequence[TaskSpec], envs: Sequence[Any], obs_width: int, seed: int,
             epsilon: float = 0.0) -> dict:
    """Return and normalized score per task on fixed seeds, greedy or epsilon-greedy with EvalCallback's draws (as it
    computes eval/<task>/...: the original policy's row repeats the run's final evaluation)."""
    per_task, normalized, returns = {}, [], []
    for i, (task, env) in enumerate(zip(tasks, envs, strict=True)):
        act = epsilon_greedy(task_policy(policy, i, obs_width), task.n_actions, epsilon, seed, i)
        r = run_episodes(act, env, seed=seed)
        mean = float(r.mean())
        score = task.normalize(mean)
        per_task[task.name] = {"return": mean, "return_std": float(r.std(unbiased=False)), "normalized": score}
        returns.append(mean)
        if score is not None:
            normalized.append(score)
    return {"eval": per_task, "mean_return": sum(returns) / len(returns),
            "mean_normalized": sum(normalized) / len(normalized) if normalized else None}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def retention(entry: dict, original: dict) -> None:
    """retention = compressed / original mean normalized score (mean return for tasks without references)."""
    key = "mean_normalized" if original["mean_normalized"] is not None else "mean_return"
    entry["retention"] = _ratio(entry[key], original[key])
    per_task = {}
    for task, values in entry["eval"].items():
        k = "normalized" if values["normalized"] is not None else "return"
        per_task[task] = _ratio(values[k], original["eval"][task][k])
    entry["retention_per_task"] = per_task
    entry["params_ratio"] = _ratio(entry["params"], original["params"])
    entry["size_ratio"] = _ratio(original["file_bytes"], entry["file_bytes"])  # times smaller
    entry["speedup"] = {b: _ratio(original["latency_ms"][b], ms) for b, ms in entry["latency_ms"].items()}
    ts, ts_ref = entry.get("latency_ms_torchscript"), original.get("latency_ms_torchscript")
    entry["speedup_torchscript"] = {b: _ratio(ts_ref[b], ms) for b, ms in ts.items()} if ts and ts_ref else None


def measurement_notes(entries: list[dict], skipped: list[str]) -> list[str]:
    """What the measurements say, in words: latency gains or their absence, file sizes, export results."""
    original, notes = entries[0], list(skipped)
    for e in entries[1:]:
        label = "unstructured sparsity" if e["methods"][-1] == "prune" else e["name"]
        for key, form in (("latency_ms", "eager"), ("latency_ms_torchscript", "TorchScript")):
            if not e.get(key) or not original.get(key):
                continue
            for b, ms in e[key].items():
                ref = original[key][b]
                if ms < GAIN * ref:
                    notes.append(f"{label}: latency gain measured at batch {b} ({form}): {ref / ms:.2f}x faster "
                                 f"({ms:.4f} ms vs {ref:.4f} ms)")
                else:
                    notes.append(f"{label}: no latency gain measured at batch {b} ({form}) "
                                 f"({ms:.4f} ms vs {ref:.4f} ms)")
        if e["file_bytes"] >= GAIN * original["file_bytes"]:
            notes.append(f"{label}: no file size gain ({e['file_bytes']} bytes vs {original['file_bytes']}; "
                         "zeros are stored densely)" if "prune" in e["methods"] else
                         f"{label}: no file size gain ({e['file_bytes']} bytes vs {original['file_bytes']})")
        for kind, result in e["export"].items():
            if result.get("status") != "ok":
                notes.append(f"{e['name']}: {kind} export {result.get('status')}: {result.get('message')}")
            elif result["action_agreement"] < 1.0:
                notes.append(f"{e['name']}: {kind} export picks other actions on "
                             f"{100 * (1 - result['action_agreement']):.2f}% of the check states")
    onnx_skips = {e["export"].get("onnx", {}).get("message") for e in entries
                  if e["export"].get("onnx", {}).get("status") == "skipped"}
    return [n for n in notes if not any(s and s in n for s in onnx_skips)] + sorted(s for s in onnx_skips if s)


def run_compression(
    policy: QPolicy,
    builder: NetBuilder,
    tasks: Sequence[TaskSpec],
    env_factories: Sequence[EnvFactory],
    replay_obs: Sequence[Tensor],
    settings: CompressionSettings,
    out_dir: str | Path,
    source: dict | None = None,
) -> dict:
    """Compress `policy` (float32, on CPU) with every chain of `settings.methods`, measure, evaluate, export and
    write report.json / report.md / report.png into `out_dir`. Returns the report. `source` ({path, env_steps,
    run_status, warning}: the checkpoint compressed, None for the network in memory) is recorded in it.

    Everything is written into `out_dir/.partial` first and moved in when complete, replacing an earlier report's
    files and removing its policy folders (`original`, `distill`, `distill+quantize`, ...): the folder holds one
    report and the policies it lists; other files in it stay. An interrupted run leaves the earlier report whole."""
    final_dir = Path(out_dir)
    out_dir = final_dir / STAGE
    if out_dir.exists():  # left by an interrupted run
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    t_start = time.perf_counter()
    policy = policy.eval()
    obs_width = max(t.obs_dim for t in tasks)
    pool = build_pool(policy, env_factories, replay_obs, obs_width, settings)
    policies, skipped = compress_chains(policy, pool, builder, settings)
    envs = [f(num_envs=settings.eval.episodes, device="cpu") for f in env_factories]
    check = fixed_batch(pool, settings.export.check_states, settings.seed) if len(pool) else None
    entries, timed = [], {}
    for name, (p, methods, info) in policies.items():
        log.info("compression: measuring %s", name)
        params, nonzero = count_params(p)
        macs, macs_nz = count_macs(p)
        exports, scripted = export_all(p, check, out_dir / name, settings)
        entry = {"name": name, "methods": methods, "params": params, "nonzero_params": nonzero,
                 "file_bytes": file_bytes(p, out_dir / name / "model.pt"), "macs": macs, "macs_nonzero": macs_nz,
                 **evaluate(p, tasks, envs, obs_width, settings.eval.seed, settings.eval.epsilon), "info": info, "export": exports}
        entries.append(entry)
        timed[name] = p
        if scripted is not None:
            timed[f"{name}{TS_SUFFIX}"] = scripted
    for env in envs:
        env.close()
    inputs = latency_inputs(pool, obs_width, settings.latency.batch_sizes, settings.seed)
    latency = measure_latency(timed, inputs, settings.latency.calls, settings.latency.rounds, settings.latency.warmup)
    for entry in entries:
        entry["latency_ms"] = {str(b): latency[entry["name"]][b] for b in inputs}
        scripted_ms = latency.get(f"{entry['name']}{TS_SUFFIX}")
        entry["latency_ms_torchscript"] = {str(b): scripted_ms[b] for b in inputs} if scripted_ms else None
    for entry in entries:
        retention(entry, entries[0])
    report = {"policies": entries, "notes": measurement_notes(entries, skipped),
              "pool_states": len(pool), "eval_episodes": settings.eval.episodes, "eval_seed": settings.eval.seed,
              "torch_threads_latency": 1, "seconds": round(time.perf_counter() - t_start, 1)}
    if source is not None:
        report["checkpoint"] = dict(source)
        if source.get("warning"):
            report["notes"].insert(0, source["warning"])
    for entry in entries:  # the exports' paths where they end up
        for result in entry["export"].values():
            if "path" in result:
                result["path"] = str(final_dir / Path(result["path"]).relative_to(out_dir))
    write_report(report, out_dir)
    replace_outputs(out_dir, final_dir)
    return report


def is_policy_folder(path: Path) -> bool:
    """A policy folder of a report: `original`, or a chain of methods joined by '+'."""
    return path.is_dir() and (path.name == "original" or all(m in METHODS for m in path.name.split("+")))


def replace_outputs(stage: Path, out_dir: Path) -> None:
    """Move the complete report in `stage` into `out_dir`, first removing an earlier report's files and every policy
    folder (those this report does not list too); then remove `stage`."""
    for path in out_dir.iterdir():
        if path.name in REPORT_FILES and path.is_file():
            path.unlink()
        elif is_policy_folder(path):
            shutil.rmtree(path)
    for path in stage.iterdir():
        path.rename(out_dir / path.name)
    stage.rmdir()


def export_all(policy: QPolicy, check: StatePool | None, out_dir: Path, settings: CompressionSettings
               ) -> tuple[dict, torch.jit.ScriptModule | None]:
    """TorchScript and ONNX exports as configured, each checked for identical actions on the check states;
    also returns the loaded TorchScript module (for its latency), None without one."""
    if check is None:
        return {}, None
    out, scripted = {}, None
    if settings.export.torchscript:
        out["torchscript"], scripted = export_torchscript(policy, check.obs, check.task_ids, out_dir / "model.ts")
    if settings.export.onnx:
        out["onnx"] = export_onnx(policy, check.obs, check.task_ids, out_dir / "model.onnx")
    return out, scripted


def latency_inputs(pool: StatePool, obs_width: int, sizes: Sequence[int], seed: int) -> dict[int, tuple]:
    """A fixed batch of pool states (drawn with replacement) per batch size; zeros when the pool is empty."""
    g = torch.Generator().manual_seed(seed + 1)
    out = {}
    for b in sizes:
        if len(pool) == 0:
            out[int(b)] = (torch.zeros(int(b), obs_width), torch.zeros(int(b), dtype=torch.int64))
            continue
        idx = torch.randint(0, len(pool), (int(b),), generator=g)
        out[int(b)] = (pool.obs[idx].contiguous(), pool.task_ids[idx].contiguous())
    return out


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _source_lines(source: dict | None) -> list[str]:
    """The markdown lines naming the compressed checkpoint, its env steps and its run's status (none without)."""
    if not source:
        return []
    steps = source.get("env_steps")
    where = f"`{source['path']}`" if source.get("path") else "the network trained by this run, at the end of training"
    line = (f"Compressed: {where}, at {'unknown' if steps is None else f'{steps:,}'} env steps (run status: "
            f"{source.get('run_status') or 'unknown'}).")
    return [line, *([f"**Warning:** {source['warning']}"] if source.get("warning") else []), ""]


def markdown(report: dict) -> str:
    """The report as a markdown table plus notes."""
    entries = report["policies"]
    tasks = list(entries[0]["eval"])
    sizes = list(entries[0]["latency_ms"])
    scripted = all(e.get("latency_ms_torchscript") for e in entries)
    head = (["policy", "params", "non-zero", "file bytes", "x smaller", "MACs", "non-zero MACs"]
            + [f"latency b{b} ms" for b in sizes] + ([f"TorchScript b{b} ms" for b in sizes] if scripted else [])
            + ["mean normalized", "retention"] + tasks)
    lines = ["# Compression report", "",
             f"{report['eval_episodes']} greedy episodes per task (seeds {report['eval_seed']}+i) for every "
             f"policy; latency: median ms per forward call (eager in-memory policy, and its TorchScript export), "
             f"torch threads 1; {report['pool_states']} training states.", "",
             *_source_lines(report.get("checkpoint")),
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        per_task = [f"{_fmt(v['normalized'])} ({v['return']:.1f})" for v in e["eval"].values()]
        row = ([e["name"], str(e["params"]), str(e["nonzero_params"]), str(e["file_bytes"]),
                _fmt(e["size_ratio"], ".2f"), str(e["macs"]), str(e["macs_nonzero"])]
               + [_fmt(e["latency_ms"][b], ".4f") for b in sizes]
               + ([_fmt(e["latency_ms_torchscript"][b], ".4f") for b in sizes] if scripted else [])
               + [_fmt(e["mean_normalized"]), _fmt(e["retention"])] + per_task)
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Per task: normalized score (mean return). Retention = compressed / original mean normalized "
              "score. MACs: multiply-adds per state over every Linear the forward runs.", "", "## Notes", ""]
    lines += [f"- {n}" for n in report["notes"]]
    lines += ["", "## Exports", ""]
    for e in entries:
        for kind, r in e["export"].items():
            detail = (f"action agreement {r['action_agreement']:.4f}, {r['bytes']} bytes" if r.get("status") == "ok"
                      else r.get("message", ""))
            lines.append(f"- {e['name']} {kind}: {r.get('status')} ({detail})")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> str | None:
    """PNG of mean normalized score (or retention) against saved file size; None, or why it was not drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[report]'): no report.png"
    entries = report["policies"]
    use_norm = entries[0]["mean_normalized"] is not None
    key = "mean_normalized" if use_norm else "mean_return"
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for e in entries:
        ax.scatter(e["file_bytes"] / 1024, e[key], s=40)
        ax.annotate(e["name"], (e["file_bytes"] / 1024, e[key]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ref = entries[0][key]
    ax.axhline(ref, color="grey", lw=0.8, ls="--", label="original")
    ax.axhline(0.95 * ref, color="tab:red", lw=0.8, ls=":", label="95% of original")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("saved file size (KiB, log scale)")
    ax.set_ylabel("mean normalized score" if use_norm else "mean return")
    ax.set_title("Return against size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def write_report(report: dict, out_dir: Path) -> None:
    """report.json, report.md and report.png in `out_dir`."""
    missing = plot(report, out_dir / "report.png")
    if missing:
        report["notes"].append(missing)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(markdown(report))


def summary_metrics(report: dict) -> dict[str, float]:
    """Flat `compression/<policy>/<metric>` numbers for the W&B summary and summary.json."""
    out: dict[str, float] = {}
    for e in report["policies"]:
        prefix = f"compression/{e['name']}"
        for key in ("params", "nonzero_params", "file_bytes", "macs", "mean_normalized", "retention", "size_ratio"):
            if e.get(key) is not None:
                out[f"{prefix}/{key}"] = e[key]
        for b, ms in e["latency_ms"].items():
            out[f"{prefix}/latency_ms_b{b}"] = ms
        for b, ms in (e.get("latency_ms_torchscript") or {}).items():
            out[f"{prefix}/latency_ms_torchscript_b{b}"] = ms
    return out
