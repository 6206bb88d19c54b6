"""Benchmark env steps/s: DrivingVecEnv (all tasks) vs gymnasium CartPole (vector) vs highway-env lane-keeping."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mtdqn.envs.driving import TASKS, DrivingConfig, DrivingVecEnv  # noqa: E402


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _stepping_rate(step: Callable, acts, n: int, repeats: int, warmup: int = 10) -> float:
    """Median over repeats of env steps per second of `step(a)` for every action batch in `acts` (n envs);
    on a GPU the clock stops only after the queued kernels finished."""
    for a in acts[:warmup]:
        step(a)

    def run() -> float:
        _sync()
        t0 = time.perf_counter()
        for a in acts:
            step(a)
        _sync()
        return n * len(acts) / (time.perf_counter() - t0)

    return statistics.median(run() for _ in range(repeats))


def bench_driving(task: str, n: int, steps: int, repeats: int, device: str = "cpu", stop_feature: bool = False) -> float:
    """Env steps/s of DrivingVecEnv(task, n) on `device` under uniform random actions (`stop_feature`: with the
    stop-point observation)."""
    env = DrivingVecEnv(task, n, device=device, config=DrivingConfig(stop_feature=stop_feature))
    env.reset(0)
    acts = torch.randint(0, env.n_actions, (steps, n), generator=torch.Generator().manual_seed(0)).to(device)
    return _stepping_rate(env.step, acts, n, repeats)


def bench_gym_vec(env_id: str, n: int, steps: int, repeats: int, mode: str) -> float:
    """Env steps/s of gym.make_vec(env_id, n) under random actions."""
    env = gym.make_vec(env_id, num_envs=n, vectorization_mode=mode)
    env.reset(seed=0)
    env.action_space.seed(0)
    acts = [env.action_space.sample() for _ in range(steps)]
    rate = _stepping_rate(env.step, acts, n, repeats)
    env.close()
    return rate


def _highway_available() -> bool:
    try:
        import highway_env  # noqa: F401
    except ImportError:
        return False
    return True


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def build_parser() -> argparse.ArgumentParser:
    """The command line (the README's cookbook commands are parsed with it in a test)."""
    p = argparse.ArgumentParser(prog="bench_envs.py", description=__doc__)
    p.add_argument("--counts", type=int, nargs="+", default=[1, 64, 1024, 4096], help="parallel env counts")
    p.add_argument("--steps", type=int, default=200, help="timed steps per repeat for vectorized envs")
    p.add_argument("--repeats", type=int, default=5, help="repeats; the median is reported")
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch intra-op thread counts to run")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--highway-counts", type=int, nargs="+", default=[1, 4], help="env counts for highway-env")
    p.add_argument("--highway-steps", type=int, default=100, help="timed steps per repeat for highway-env")
    p.add_argument("--device", default="cpu", help="device of the driving simulator (cpu, cuda)")
    p.add_argument("--no-cartpole", action="store_true")
    p.add_argument("--no-highway", action="store_true")
    p.add_argument("--stop-feature", action="store_true",
                   help="also time every driving task with the stop-point observation (DrivingConfig.stop_feature)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print a markdown table (steps/s; median of --repeats)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("--counts", "--steps", "--repeats", "--threads", "--highway-counts", "--highway-steps"):
        given = getattr(args, flag[2:].replace("-", "_"))  # --counts 0 ended in a ValueError traceback naming
        values = given if isinstance(given, list) else [given]  # the simulator's num_envs
        if any(v < 1 for v in values):
            parser.error(f"{flag} {' '.join(map(str, values))}: "
                         f"{'each must be' if isinstance(given, list) else 'must be'} an integer >= 1")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{now}; {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}); torch {torch.__version__}, device {args.device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if args.device.startswith('cuda') else ''}, "
          f"gymnasium {gym.__version__}, numpy {np.__version__}; median of {args.repeats} repeats")  # fmt: skip
    counts = args.counts
    print("\n| env | threads | " + " | ".join(f"n={n}" for n in counts) + " |")
    print("|---|---|" + "---:|" * len(counts))
    ours: dict[tuple[str, int], dict[int, float]] = {}
    for th in args.threads:
        torch.set_num_threads(th)
        for task in args.tasks:
            ours[task, th] = {n: bench_driving(task, n, args.steps, args.repeats, args.device) for n in counts}
            print(f"| mtdqn driving/{task} | {th} | " + " | ".join(_fmt(ours[task, th][n]) for n in counts) + " |", flush=True)
            if args.stop_feature:
                rates = {n: bench_driving(task, n, args.steps, args.repeats, args.device, True) for n in counts}
                print(f"| mtdqn driving/{task} + stop point | {th} | "
                      + " | ".join(f"{_fmt(rates[n])} ({rates[n] / ours[task, th][n]:.2f}x)" for n in counts) + " |",
                      flush=True)  # fmt: skip
    if not args.no_cartpole:
        cp = {n: bench_gym_vec("CartPole-v1", n, args.steps, args.repeats, "vector_entry_point") for n in counts}
        print("| gymnasium CartPole-v1 (vector_entry_point) | - | " + " | ".join(_fmt(cp[n]) for n in counts) + " |")
    hw: dict[int, float] = {}
    if args.no_highway:
        pass
    elif not _highway_available():
        print("\nnote: highway-env is not installed; skipped (pip install highway-env)")
    else:
        hw = {n: bench_gym_vec("lane-keeping-v0", n, args.highway_steps, max(1, args.repeats // 2), "sync")
              for n in args.highway_counts}  # fmt: skip
        cells = [_fmt(hw.get(n)) for n in counts]
        print("| highway-env lane-keeping-v0 (sync) | - | " + " | ".join(cells) + " |")
        extra = {n: r for n, r in hw.items() if n not in counts}
        if extra:
            print("\nhighway-env at other counts: " + ", ".join(f"n={n}: {_fmt(r)}" for n, r in extra.items()))
    if hw:
        best_hw = max(hw.values())
        print(f"\nratio ours / highway-env (best highway-env rate {best_hw:,.0f} steps/s):")
        for (task, th), rates in ours.items():
            print(f"- {task} ({th} thread{'s' * (th > 1)}): n={counts[0]} vs highway n=1: "
                  f"{rates[counts[0]] / hw.get(1, best_hw):.2f}x; n={counts[-1]} vs best highway: "
                  f"{rates[counts[-1]] / best_hw:,.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()
