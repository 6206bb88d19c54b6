#!/usr/bin/env python
"""Compress a trained run's Q-network and report what each compressed policy costs in return.

Reads RUN_DIR/config.yaml and RUN_DIR/checkpoints/last.ckpt (weights-only; it holds the replay buffers the
fine-tuning and distillation train on), applies the chains of methods and writes report.json, report.md,
report.png and the compressed models (POLICY/model.pt, model.ts, model.onnx) into RUN_DIR/compression (or --out),
replacing the report and every policy folder an earlier report left there.

Examples:
    python scripts/compress.py outputs/lane_keep_mtl/<time>
    python scripts/compress.py RUN_DIR --methods distill quantize --methods prune --methods structured
    python scripts/compress.py RUN_DIR --methods distill distill.hidden=[32,32] distill.steps=3000 eval.episodes=32

Settings: conf/compression/default.yaml, overridden by the run's own `compression` settings when it had some,
then by KEY=VALUE arguments (keys relative to `compression`). Each --methods is one chain, applied in order
from the trained network; every prefix of a chain is reported.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mtdqn.callbacks.checkpoint import load_checkpoint
from mtdqn.compression import CompressionSettings, net_builder, run_compression
from mtdqn.compression.data import replay_observations
from mtdqn.compression.policy import QPolicy
from mtdqn.compression.report import markdown
from mtdqn.envs import env_factory, task_specs
from mtdqn.evaluation.compare import run_status
from mtdqn.resume import state_env_steps
from mtdqn.train import instantiate

CONF = Path(__file__).resolve().parents[1] / "conf" / "compression" / "default.yaml"
WIRING = ("_target_", "_convert_", "net", "output_dir")  # callback wiring, not settings


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="compress.py", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run folder with config.yaml and checkpoints/")
    p.add_argument("--methods", nargs="+", action="append", metavar="METHOD",
                   help="one chain of methods (distill prune structured quantize fp16 bf16), applied in order; "
                        "repeat for several chains (default: the chains of conf/compression/default.yaml)")
    p.add_argument("--ckpt", type=Path, default=None, help="checkpoint (default: RUN_DIR/checkpoints/last.ckpt)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: RUN_DIR/compression); an earlier report and its policy folders "
                        "there are replaced")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="settings relative to `compression`, e.g. distill.steps=3000 prune.sparsity=0.9")
    return p


def settings_for(run_cfg: DictConfig, methods: list[list[str]] | None, overrides: Sequence[str]) -> CompressionSettings:
    """conf/compression/default.yaml < the run's compression settings (if it had methods) < KEY=VALUE < --methods."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides {bad} must be KEY=VALUE (keys relative to `compression`)")
    layers = [_settings_only(OmegaConf.load(CONF))]
    run_node = run_cfg.get("compression")
    if run_node and run_node.get("methods"):
        layers.append(_settings_only(run_node))
    layers.append(OmegaConf.from_dotlist(list(overrides)))
    node = OmegaConf.merge(*layers)
    if methods:
        node.methods = [[m for token in chain for m in token.replace(",", "+").split("+") if m] for chain in methods]
    # resolved inside the run's config: ${seed}, ${oc.select:callbacks.eval.episodes,...} are the run's own
    context = OmegaConf.merge({k: v for k, v in run_cfg.items() if k != "compression"}, {"compression": node})
    return CompressionSettings.from_dict(OmegaConf.to_container(context.compression, resolve=True))


def _settings_only(node: DictConfig) -> DictConfig:
    """The compression node without the callback wiring keys (target, net factory, output folder)."""
    return OmegaConf.create({k: v for k, v in OmegaConf.to_container(node, resolve=False).items() if k not in WIRING})


def load_run(run_dir: Path, ckpt: Path | None = None, max_states: int | None = None, seed: int = 0):
    """(policy, builder, tasks, env factories, replay observations, config, the checkpoint's env steps) of a
    finished run, on CPU; image (uint8) replays drawn down to max_states over tasks before they become floats."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    ts = cfg.task_set
    env_kwargs = OmegaConf.to_container(ts.env_kwargs, resolve=True) if ts.get("env_kwargs") else {}
    tasks = task_specs(ts.kind, list(ts.tasks), env_kwargs)
    factories = [env_factory(ts.kind, t, env_kwargs) for t in ts.tasks]
    ckpt = checkpoint_path(run_dir, ckpt)
    checkpoint = load_checkpoint(ckpt)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"checkpoint {str(ckpt)!r} is not a training checkpoint (it has no state_dict)")
    net_factory = instantiate(cfg.net)
    multitask = "tasks" in _parameters(net_factory)
    if cfg.model.get("popart"):  # the module hands the net its PopArt head (MultiTaskDQNModule)
        net_factory = partial(net_factory, popart_beta=float(cfg.model.popart_beta))
    builder = net_builder(net_factory, tasks, multitask)
    net = builder(list(cfg.net.hidden))
    weights = {k.removeprefix("q_net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("q_net.")}
    try:
        net.load_state_dict(weights)
    except RuntimeError as exc:  # another network, width or task set: torch lists every mismatched tensor
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise ValueError(
            f"checkpoint {str(ckpt)!r}: its weights do not fit the network of {str(run_dir / 'config.yaml')!r} "
            f"(net._target_={cfg.net.get('_target_')}, net.hidden={list(cfg.net.hidden)}, task_set.tasks="
            f"{list(ts.tasks)}); was it saved by another run? First mismatch: {detail}") from None
    data_state = next((v for v in checkpoint.values() if isinstance(v, dict) and "replays" in v), None)
    replay_obs = replay_observations(data_state["replays"], max_states, seed) if data_state else []
    return (QPolicy(net.float().eval(), multitask), builder, tasks, factories, replay_obs, cfg,
            state_env_steps(checkpoint))


def checkpoint_path(run_dir: Path, ckpt: Path | None) -> Path:
    """The checkpoint to load (--ckpt, else RUN_DIR/checkpoints/last.ckpt); ValueError naming it when it is missing."""
    if ckpt is not None:
        if not ckpt.is_file():
            raise ValueError(f"--ckpt={str(ckpt)!r} does not exist" if not ckpt.exists()
                             else f"--ckpt={str(ckpt)!r} is not a file")
        return ckpt
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise ValueError(f"RUN_DIR={str(run_dir)!r} has no checkpoints/last.ckpt: the run ended before its first "
                         "checkpoint (see its summary.json and log); pass --ckpt to use another checkpoint")
    return last


def status_warning(run_dir: Path, status: str | None, ckpt: Path, env_steps: int | None, out: Path | None
                   ) -> str | None:
    """What to know when the run has not completed: its checkpoint is an intermediate one (or the last before a
    failure), and by default the report goes into the folder of a run that may still be writing; None if done."""
    if status == "completed":
        return None
    state = ("is still running (summary.json: status 'running')" if status == "running"
             else f"did not complete (summary.json: status {status!r})" if status
             else "has no summary.json (still starting, or killed)")
    steps = "unknown env steps" if env_steps is None else f"{env_steps:,} env steps"
    live = (f"; the report goes into {str(run_dir / 'compression')!r}, which the run itself may still write "
            "(pass --out to write elsewhere)") if out is None and status in ("running", None) else ""
    what = ("its last checkpoint so far" if ckpt == run_dir / "checkpoints" / "last.ckpt"
            else "the checkpoint given by --ckpt")
    return (f"RUN_DIR={str(run_dir)!r} {state}: compressing {what}, {str(ckpt)!r}, saved at {steps}, not the "
            f"policy of a completed run{live}")


def _parameters(factory) -> set[str]:
    import inspect

    target = getattr(factory, "func", factory)
    return set(inspect.signature(target).parameters)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the compression report for one run folder; returns the report."""
    args = build_parser().parse_intermixed_args(argv)
    for chain in args.methods or []:  # KEY=VALUE right after --methods lands in the chain: move it back
        args.overrides += [t for t in chain if "=" in t]
        chain[:] = [t for t in chain if "=" not in t]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.run_dir.exists():
        raise ValueError(f"RUN_DIR={str(args.run_dir)!r} does not exist")
    if not args.run_dir.is_dir():
        raise ValueError(f"RUN_DIR={str(args.run_dir)!r} is not a folder (a run folder holds config.yaml and "
                         "checkpoints/)")
    if not (args.run_dir / "config.yaml").is_file():
        raise ValueError(f"RUN_DIR={str(args.run_dir)!r} has no config.yaml: not a run folder")
    run_cfg = OmegaConf.load(args.run_dir / "config.yaml")
    settings = settings_for(run_cfg, args.methods, args.overrides)  # validated before anything runs
    if not settings.methods:
        raise ValueError("compression.methods is empty: pass --methods (e.g. --methods distill quantize)")
    missing = [k for k in ("task_set", "net", "model") if not OmegaConf.is_dict(run_cfg.get(k))]
    if missing:
        raise ValueError(f"{str(args.run_dir / 'config.yaml')!r} has no {', '.join(missing)}: not a run's config")
    checkpoint_path(args.run_dir, args.ckpt)  # missing before any work
    torch.set_num_threads(1)
    policy, builder, tasks, factories, replay_obs, _, env_steps = load_run(
        args.run_dir, args.ckpt, settings.data.max_states, settings.seed)
    ckpt = checkpoint_path(args.run_dir, args.ckpt)
    status = run_status(args.run_dir)
    warning = status_warning(args.run_dir, status, ckpt, env_steps, args.out)
    if warning:
        print(f"compress.py: warning: {warning}", file=sys.stderr)
    source = {"path": str(ckpt), "env_steps": env_steps, "run_status": status, "warning": warning}
    report = run_compression(policy, builder, tasks, factories, replay_obs, settings,
                             args.out or args.run_dir / "compression", source)
    print(markdown(report))
    return report


if __name__ == "__main__":
    try:
        main()
    except ValueError as exc:
        print(f"compress.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
