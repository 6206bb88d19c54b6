#!/usr/bin/env python
"""Multi-task vs single-task DQN: does sharing one network make the tasks cheaper?

For each seed: one multi-task agent (+experiment=lane_keep_mtl: lane_keep, pedestrian and traffic_light; another
set of driving tasks with --mtl 'task_set.tasks=[pedestrian,traffic_light,urban]', gymnasium ids with e.g. --mtl
experiment=classic_mtl) and one single-task agent per task (+experiment=lane_keep_dqn task_set=<task>; a gymnasium
id's agent composes the multi-task agent's task_set group with that one id, --single experiment=cartpole_dqn picks
its preset) with the same network size and hyperparameters and the same env steps per task. Each task counts as
solved at its bar: normalized >= --threshold for the driving tasks (which have reference scores), the mean eval
return of --solve-return TASK=RETURN, else gymnasium's registered reward_threshold (CartPole-v1 475, Acrobot-v1
-100; a task with none is refused before anything trains). Reports the env steps (summed over tasks) until every
task is at its bar (multi-task: the first evaluation where all are; single-task: the sum of each agent's own time
to its bar), the final score per task with 95% bootstrap CIs over seeds, wall time, and per task the multi-task
agent's own env steps on that task until the task first reaches its bar (time/<task>/env_steps), the way its
single-task agent is timed, and how noisy one evaluation is (the standard error of its score per task; a first
crossing of a bar is partly luck). Prints markdown; --out writes JSON.

    python scripts/bench_mtl.py --seeds 0 1 2 [--eval-episodes 64] [--mtl experiment=lane_keep_mtl_share] [--jobs 2]
    python scripts/bench_mtl.py --seeds 0 1 2 --mtl experiment=classic_mtl --single experiment=cartpole_dqn \
        --eval-every 5000 --single-steps 100000

The single-task agents are given the multi-task agent's shared settings (SHARED below: loss, learning rate,
replay ratio, evaluation episodes, ...; lane_keep_dqn alone is Huber at replay ratio 0.125, lane_keep_mtl MSE at
0.25) and --single-steps env steps each; the two commands it trains are printed first. --single overrides win,
and agents that still differ in a shared setting are refused (--no-align: no alignment).

Runs made separately with train.py (logger=jsonl; e.g. one agent per core, or a single-task agent given a longer
budget than the multi-task one) are reported with --merge: each --runs directory (metrics.jsonl + config.yaml)
replaces, for its seed, the multi-task agent (model=mtdqn) or the single-task agent of its task; agents that differ
in a SHARED setting (loss, learning rate, replay ratio, evaluation episodes, ...), or in epsilon's decay where it
runs on each task's own env steps (single-task agents; multi-task with data.exploration_clock=task), are refused,
here and before a bench trains anything:

    python scripts/bench_mtl.py --merge bench_s0.json bench_s1.json --runs outputs/mtl_s0 outputs/ped_1M_s0

Records that repeat a seed (one setting run on two machines: their float rounding differs, so each run is its own
draw) are pooled, every run counted and labelled with its record:

    python scripts/bench_mtl.py --seeds 0 1 2 --merge machine_a.json machine_b.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from learning_results import bootstrap_ci, first_reach, median, run_seed, summarize  # noqa: E402

from mtdqn.overrides import compose_config  # noqa: E402

# what "the same hyperparameters" means here: the multi-task and the single-task agents must agree on these (budgets,
# warm-up, target sync and evaluation cadence are per agent: the multi-task agent's are summed over its tasks)
SHARED = ("model.loss", "model.double_q", "optimizer._target_", "optimizer.lr", "gamma", "net.hidden", "net.conv",
          "data.replay_ratio", "data.batch_size", "replay.n_step", "exploration.end", "callbacks.eval.episodes",
          "task_set.env_kwargs",  # the simulator's knobs and observation options (e.g. stop_feature)
          *(NOT_ALIGNED := ("replay._target_", "replay.alpha", "replay.beta")))  # uniform or prioritized replay
# NOT_ALIGNED: compared but not copied to the single-task agents: a replay kind is a config group
# (replay=prioritized), which --single must name itself (copying _target_ alone would leave the other kind's keys)
KEEP_NULL = ("net.conv",)  # recorded when null too: a convolutional encoder against none is another network
PER_TASK_DURATION = "exploration.duration (per task)"  # compared only where epsilon decays per task (shared_settings)
BATCH_UNIT = "data.batch_size_unit"  # multi-task agents only: whether data.batch_size is split across tasks (total:
# the same samples per summed env step as a single-task agent) or drawn per task (per_task: the same batch per task);
# recorded with every run and compared among the multi-task agents


def shared_settings(cfg) -> dict:
    """The SHARED settings of a composed or saved train.py config (keys it does not have are left out)."""
    from omegaconf import OmegaConf

    out = {}
    for key in SHARED:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None or (key in KEEP_NULL and OmegaConf.select(cfg, key.rsplit(".", 1)[0]) is not None):
            out[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    # epsilon's decay is comparable when it runs on each task's own env steps: always for a single-task agent, for a
    # multi-task one with data.exploration_clock=task (with the default summed clock it is a budget over all tasks)
    multi = str(OmegaConf.select(cfg, "model._target_", default="")).endswith("MultiTaskDQNModule")
    duration = OmegaConf.select(cfg, "exploration.duration", default=None)
    if duration is not None and (not multi or OmegaConf.select(cfg, "data.exploration_clock") == "task"):
        out[PER_TASK_DURATION] = duration
    if multi:  # runs from before the option drew data.batch_size in all
        out[BATCH_UNIT] = OmegaConf.select(cfg, BATCH_UNIT, default=None) or "total"
    return out


def check_alike(agents: dict[str, dict]) -> None:
    """Refuse agents ({label: shared settings}) that differ in a SHARED setting: a multi-task agent with the MSE loss
    against Huber single-task agents, or evaluated on 64 episodes against 16 (fewer episodes, noisier and earlier
    first crossings), would not be compared alike."""
    for key in (*SHARED, PER_TASK_DURATION, BATCH_UNIT):
        values = {label: s[key] for label, s in agents.items() if key in s}
        if len({json.dumps(v) for v in values.values()}) > 1:
            hint = "--single replay=prioritized" if key in NOT_ALIGNED else "--single / --mtl overrides"
            raise SystemExit(f"the agents differ in {key}: {values}; compare agents with the same {key} "
                             f"(e.g. {hint})")


class Bar(NamedTuple):
    """When one task counts as solved: an evaluation's `metric` >= `value`."""

    metric: str  # "normalized" (driving tasks: 0 = uniform random, 1 = the scripted reference) or "return"
    value: float

    def key(self, task: str) -> str:
        return f"eval/{task}/{self.metric}"

    def reached(self, m: dict, task: str) -> bool:
        return m.get(self.key(task), float("-inf")) >= self.value


Bars = dict[str, Bar]  # per task, in task-set order


def task_bars(kind: str, tasks: Sequence[str], env_kwargs: dict | None, threshold: float,
              solve_returns: dict[str, float]) -> Bars:
    """Each task's bar: --solve-return's mean eval return where given, else normalized >= threshold for tasks with
    reference scores (the driving tasks), else gymnasium's registered reward_threshold (CartPole-v1: 475,
    Acrobot-v1: -100); a task with none of them is refused by name (MinAtar games register no threshold)."""
    from mtdqn.envs import task_spec

    unknown = [t for t in solve_returns if t not in tasks]
    if unknown:
        raise SystemExit(f"--solve-return names {unknown}, not tasks of the multi-task agent's task set {list(tasks)}")
    bars, missing = {}, []
    for t in tasks:
        spec = task_spec(kind, t, env_kwargs)
        if t in solve_returns:
            bars[t] = Bar("return", solve_returns[t])
        elif spec.normalize(0.0) is not None:
            bars[t] = Bar("normalized", threshold)
        elif spec.reward_threshold is not None:
            bars[t] = Bar("return", float(spec.reward_threshold))
        else:
            missing.append(t)
    if missing:
        raise SystemExit(f"{missing}: no normalized score and no gymnasium reward_threshold registered, so the bench "
                         f"cannot tell when the task is solved; give the mean eval return that counts as solved, "
                         f"e.g. --solve-return {missing[0]}=<return>")
    return bars


def bars_text(bars: Bars) -> str:
    """'threshold 0.9' (every task by normalized score at one bar, as before) or each task's bar."""
    if {b.metric for b in bars.values()} == {"normalized"} and len({b.value for b in bars.values()}) == 1:
        return f"threshold {next(iter(bars.values())).value:g}"
    return "solved at " + ", ".join(f"{t} {b.metric} >= {b.value:g}" for t, b in bars.items())


def first_all_solved(history: list[dict], bars: Bars) -> dict | None:
    """The first evaluation where every task is at its bar (None: never)."""
    for m in history:
        if all(b.reached(m, t) for t, b in bars.items()):
            return m
    return None


def each_reached(history: list[dict], bars: Bars) -> float | None:
    """Env steps by which every task has reached its bar at some evaluation (not necessarily the same one):
    the criterion the single-task agents are measured by, each at its own first crossing (None: a task never)."""
    firsts = [first_reach(history, b.key(t), b.value)[0] for t, b in bars.items()]
    return None if None in firsts else max(firsts)


def own_env_steps(history: list[dict], tasks: Sequence[str],
                  start_shares: dict[str, float] | None = None) -> list[dict[str, float]] | None:
    """The multi-task agent's own env steps on each task at each evaluation: logged as time/<task>/env_steps
    since 2026-11-29; for earlier runs integrated from the logged collection shares (data/<task>/collect_share,
    the share collected from that evaluation to the next; before the first, `start_shares`, the configured split,
    or when not given the share logged at the first evaluation). None when neither is logged."""
    if all(f"time/{t}/env_steps" in m for m in history for t in tasks):
        return [{t: m[f"time/{t}/env_steps"] for t in tasks} for m in history]
    if not all(f"data/{t}/collect_share" in m for m in history for t in tasks):
        return None
    out, acc, before, share = [], dict.fromkeys(tasks, 0.0), 0.0, start_shares
    for m in history:
        now = {t: m[f"data/{t}/collect_share"] for t in tasks}
        share = now if share is None else share
        acc = {t: acc[t] + share[t] * (m["time/env_steps"] - before) for t in tasks}
        out.append(acc)
        before, share = m["time/env_steps"], now
    return out


def own_steps_to_threshold(history: list[dict], bars: Bars,
                           start_shares: dict[str, float] | None = None) -> dict[str, float | None] | None:
    """Per task: the multi-task agent's own env steps on that task at the task's first evaluation at its bar
    (None: never), the quantity a single-task agent is timed by."""
    own = own_env_steps(history, list(bars), start_shares)
    if own is None:
        return None
    out: dict[str, float | None] = {}
    for t, b in bars.items():
        hit = next((i for i, m in enumerate(history) if b.reached(m, t)), None)
        out[t] = None if hit is None else own[hit][t]
    return out


def mtl_entry(history: list[dict], wall: float, bars: Bars, start_shares: dict[str, float] | None = None) -> dict:
    """The multi-task agent's record: env steps and training seconds (evaluations excluded) to solve all (every
    task at its bar at the same evaluation), env steps until each task has reached it once (`each_steps`),
    final score per task (on its bar's scale), wall time, the env steps the run had (a bound when it never
    solved) and the bars."""
    m = first_all_solved(history, bars)
    return {"solved_steps": None if m is None else m["time/env_steps"],
            "solved_seconds": None if m is None else m.get("time/train_seconds"),
            "each_steps": each_reached(history, bars),
            "own_steps": own_steps_to_threshold(history, bars, start_shares),
            "budget_steps": history[-1]["time/env_steps"], "wall": wall,
            "final": {t: history[-1][b.key(t)] for t, b in bars.items()}, "bars": bars, **_stopped(history)}


def _stopped(history: list[dict]) -> dict:
    """{"stopped_solved": True, "configured_steps": its data.total_env_steps} for a run that callbacks.eval.stop_at_*
    ended once solved (its "final" scores are that evaluation's, its budget_steps and wall time cut short; runs from
    before 2026-12-01 did not log the configured budget); nothing for a run that trained its whole budget."""
    last = history[-1]
    if not last.get("time/stopped_solved"):
        return {}
    budget = last.get("time/budget_env_steps")
    return {"stopped_solved": True, **({"configured_steps": budget} if budget is not None else {})}


def single_entry(history: list[dict], task: str, wall: float, bar: Bar) -> dict:
    steps, seconds = first_reach(history, bar.key(task), bar.value)
    return {"solved_steps": steps, "solved_seconds": seconds, "budget_steps": history[-1]["time/env_steps"],
            "wall": wall, "final": history[-1][bar.key(task)], "bar": bar, **_stopped(history)}


def combine_singles(singles: dict) -> dict:
    solved = [s["solved_steps"] for s in singles.values()]
    return {"tasks": singles, "solved_steps": None if None in solved else sum(solved),
            "wall": sum(s["wall"] for s in singles.values())}


def configured_shares(cfg) -> dict[str, float] | None:
    """The share of each round's env steps every task collects as configured (data.collect_weights split
    exactly as the data module splits them; None when the config does not say)."""
    from mtdqn.data.multitask import batch_counts

    data = cfg.get("data") or {}
    if "num_envs" not in data or "env_steps_per_round" not in data:
        return None
    tasks = list(cfg.task_set.tasks)
    weights = data.get("collect_weights")
    vec = (batch_counts(data.env_steps_per_round // data.num_envs, [float(w) for w in weights])
           if weights is not None else [1] * len(tasks))
    return {t: v / sum(vec) for t, v in zip(tasks, vec, strict=True)}


def eval_standard_errors(history: list[dict], episodes: int | None, bars: Bars) -> dict[str, float]:
    """Per task: the standard error of one evaluation's score on its bar's scale, return_std / sqrt(episodes)
    (divided by the reference - random return span for a normalized bar), median over the run's evaluations from
    the first that reached the task's bar on, where solving is judged (over all of them when none did: before a task
    is learned its episodes can all end alike, e.g. Acrobot's 500-step timeouts, and show no spread at all; records
    before 2026-12-01 took the median over all evaluations); tasks whose return_std is not logged are left out."""
    from mtdqn.envs import task_spec

    out = {}
    for t, b in bars.items():
        first = next((i for i, m in enumerate(history) if b.reached(m, t)), 0)
        stds = [m[f"eval/{t}/return_std"] for m in history[first:] if f"eval/{t}/return_std" in m]
        if stds and episodes:
            span = 1.0
            if b.metric == "normalized":
                spec = task_spec("driving", t)
                span = spec.reference_return - spec.random_return
            out[t] = statistics.median(stds) / episodes**0.5 / span
    return out


class RunDir(NamedTuple):
    """A train.py run directory logged with logger=jsonl, as the bench reads it."""

    seed: int
    agent: str  # "mtl" or the single task's name
    tasks: list[str]  # the run's task set (one task for a single-task agent)
    history: list[dict]  # its evaluations
    wall: float  # wall seconds
    shares: dict[str, float] | None  # configured collection shares of a multi-task run
    settings: dict  # its SHARED settings
    bars: Bars  # when each of its tasks counts as solved


def load_run_dir(path: Path, threshold: float = 0.9, solve_returns: dict[str, float] | None = None,
                 flag: str = "--runs") -> RunDir:
    """Read a run directory; one that has not completed, has no evaluations, or is a single-task agent of several
    tasks is refused (errors start with `flag` and the path). Its tasks' bars: task_bars (--solve-return's entries
    for tasks the run does not have are left to the caller to check)."""
    from omegaconf import OmegaConf

    where = f"{flag} {path}" if flag else str(path)

    cfg = OmegaConf.load(path / "config.yaml")
    summary = path / "summary.json"  # written when train.py ends: without it the "final" scores are mid-run
    status = json.loads(summary.read_text()).get("status") if summary.exists() else "still running or killed"
    if status != "completed":
        raise SystemExit(f"{where}: the run has not completed (summary.json status: {status}); its final "
                         f"scores and budget would be wrong")
    tasks = [str(t) for t in cfg.task_set.tasks]
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    history = [r for r in rows if all(f"eval/{t}/return" in r or f"eval/{t}/normalized" in r for t in tasks)]
    if not history:
        raise SystemExit(f"{where}: metrics.jsonl has no evaluations")
    agent = "mtl" if str(cfg.model._target_).endswith("MultiTaskDQNModule") else tasks[0]
    if agent != "mtl" and len(tasks) != 1:
        raise SystemExit(f"{where}: expected a multi-task run or a single-task run of one task, got "
                         f"model {cfg.model._target_} with tasks {tasks}")
    env_kwargs = OmegaConf.select(cfg, "task_set.env_kwargs", default=None)
    env_kwargs = OmegaConf.to_container(env_kwargs) if env_kwargs is not None else None
    bars = task_bars(str(cfg.task_set.kind), tasks, env_kwargs, threshold,
                     {t: v for t, v in (solve_returns or {}).items() if t in tasks})
    shares = configured_shares(cfg) if agent == "mtl" else None
    return RunDir(int(cfg.seed), agent, tasks, history, float(rows[-1].get("time", 0.0)), shares,
                  shared_settings(cfg), bars)


def apply_run_dirs(runs: list[dict], dirs: list[Path], threshold: float,
                   solve_returns: dict[str, float] | None = None) -> list[dict]:
    """Replace (or add) each run directory's agent for its seed."""
    by_seed = {r["seed"]: r for r in runs}
    for d in dirs:
        rd = load_run_dir(d, threshold, solve_returns)
        run = by_seed.setdefault(rd.seed, {"seed": rd.seed, "single": {"tasks": {}}})
        noise = noise_entry({"history": rd.history, "eval_episodes": rd.settings.get("callbacks.eval.episodes")},
                            rd.bars)
        noise |= {"settings": rd.settings, "source": str(d)}
        if rd.agent == "mtl":
            run["mtl"] = mtl_entry(rd.history, rd.wall, rd.bars, rd.shares) | noise
        else:
            run["single"]["tasks"][rd.agent] = single_entry(rd.history, rd.agent, rd.wall, rd.bars[rd.agent]) | noise
    missing = [(s, "mtl") for s, r in by_seed.items() if "mtl" not in r]
    missing += [(s, t) for s, r in by_seed.items() if "mtl" in r for t in r["mtl"]["final"]
                if t not in r["single"]["tasks"]]
    if missing:
        raise SystemExit(f"incomplete seeds after merging (seed, agent): {missing}")
    for r in by_seed.values():
        extra = sorted(set(r["single"]["tasks"]) - set(r["mtl"]["final"]))
        if extra:
            raise SystemExit(f"seed {r['seed']}: single-task agents of {extra}, a task the multi-task agent "
                             f"({list(r['mtl']['final'])}) does not train")
        r["single"] = combine_singles(r["single"]["tasks"])
    return [by_seed[s] for s in sorted(by_seed)]


def run_tasks(runs: list[dict]) -> list[str]:
    """The task set every run's multi-task agent trained (its final scores' keys); runs of different task sets
    are refused."""
    sets = {tuple(r["mtl"]["final"]) for r in runs}
    if len(sets) != 1:
        raise SystemExit(f"the runs' multi-task agents trained different task sets: {sorted(sets)}")
    return list(sets.pop())


def run_bars(runs: list[dict], threshold: float) -> Bars:
    """The bars every agent of the runs was timed at (kept with each entry since 2026-11-30; older records timed
    normalized >= `threshold`); agents timed at different bars are refused by name."""
    tasks = run_tasks(runs)
    legacy = {t: Bar("normalized", threshold) for t in tasks}
    timed: dict[str, dict[str, Bar]] = {t: {} for t in tasks}
    for r in runs:
        label = r.get("label", r["seed"])
        for t, b in (r["mtl"].get("bars") or legacy).items():
            timed[t][f"seed {label} multi-task"] = Bar(*b)
        for t, entry in r["single"]["tasks"].items():
            timed[t][f"seed {label} single-task"] = Bar(*entry.get("bar") or legacy[t])
    for t, agents in timed.items():
        if len(set(agents.values())) > 1:
            raise SystemExit(f"{t} was timed at different bars: "
                             + "; ".join(f"{a}: {b.metric} >= {b.value:g}" for a, b in agents.items())
                             + "; merge runs timed alike (--threshold, --solve-return)")
    return {t: next(iter(agents.values()), legacy[t]) for t, agents in timed.items()}


def check_runs_alike(runs: list[dict]) -> None:
    """check_alike over every agent of the merged runs that kept its SHARED settings (those read from run
    directories; records from before 2026-11-29 did not keep them and are not checked)."""
    check_alike({entry.get("source") or f"seed {r['seed']} {name}": entry.get("settings", {})
                 for r in runs for name, entry in [("multi-task", r["mtl"]), *r["single"]["tasks"].items()]})


def outcome(run: dict) -> tuple | None:
    """What a run measured: every agent's env steps to its bar (the multi-task agent's all-at-once, each-once and
    per-task own steps, which fall between evaluation steps; each single-task agent's). Two runs of one seed alike
    in all of them are one draw. None where an agent never reached its bar: runs that never solve are alike in
    that without being one draw, and are never taken for repeats."""
    mtl = run["mtl"]
    own = mtl.get("own_steps") or {}
    single = {t: e.get("solved_steps") for t, e in run["single"]["tasks"].items()}
    values = [mtl.get("solved_steps"), mtl.get("each_steps"), *own.values(), *single.values()]
    if not own or any(v is None for v in values):
        return None
    return (mtl["solved_steps"], mtl["each_steps"], tuple(sorted(own.items())), tuple(sorted(single.items())))


def pool_repeated_seeds(runs: list[dict], replacing: bool) -> None:
    """Records that repeat a seed (e.g. the same settings run on two machines, whose float rounding differs, so each
    is its own draw) are pooled: every run counts, labelled "seed (record)" in the per-seed table. --runs replaces
    a seed's agent and cannot tell such runs apart, so it is refused with them.

    A run of a seed that repeats another's outcome to the last env step (`outcome`) is no draw of its own: two
    machines that round alike repeat each other (the "third machine" of 2026-11-30 repeated the first's seeds 0-5
    exactly), and pooling both counted those runs twice and narrowed the CI. It is left out, and said so."""
    seen: dict[tuple, dict] = {}
    for r in list(runs):
        measured = outcome(r)
        key = (r["seed"], measured)
        if measured is not None and key in seen:
            first = seen[key]
            print(f"--merge: seed {r['seed']} of {r['record']} ({r['mtl'].get('source', 'multi-task')}) repeats the "
                  f"outcome of {first['record']} ({first['mtl'].get('source', 'multi-task')}) to the last env step: "
                  "one draw, counted once", file=sys.stderr)
            runs.remove(r)
        else:
            seen[key] = r
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) == len(seeds):
        return
    if replacing:
        raise SystemExit(f"--runs with --merge records that repeat a seed ({sorted(seeds)}) is ambiguous: merge the "
                         "run directories into one record first (--merge <record> --runs ... --out)")
    for r in runs:
        r["label"] = f"{r['seed']} ({r['record']})"


def noise_entry(result: dict, bars: Bars) -> dict:
    """The evaluation size and per-task standard errors of a run_seed result (see eval_standard_errors)."""
    return {"eval_episodes": result["eval_episodes"],
            "eval_se": eval_standard_errors(result["history"], result["eval_episodes"], bars)}


def _override_keys(overrides: list[str]) -> set[str]:
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}


class TaskSet(NamedTuple):
    """The multi-task agent's tasks, as the bench needs them."""

    kind: str  # task_set.kind: driving or gym
    group: str  # the task_set config group it composes (driving, gym, minatar, ...)
    bars: Bars  # its tasks, in order, and when each counts as solved


def parse_solve_return(text: str) -> tuple[str, float]:
    """--solve-return's TASK=RETURN (the task may contain '=' and '/': the value follows the last '=')."""
    task, sep, value = text.rpartition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not sep or not task or number != number or abs(number) == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected TASK=RETURN with a finite mean eval return, e.g. "
                                         "MinAtar/Breakout-v1=10")
    return task, number


def solve_returns(args: argparse.Namespace) -> dict[str, float]:
    """--solve-return as {task: return}; a task named twice is refused."""
    pairs = args.solve_return or []
    tasks = [t for t, _ in pairs]
    twice = sorted({t for t in tasks if tasks.count(t) > 1})
    if twice:
        raise SystemExit(f"--solve-return names {twice} more than once")
    return dict(pairs)


def with_preset(default: str, extra: Sequence[str]) -> list[str]:
    """`+experiment=<default>` then `extra`, or the preset `extra` chooses (`experiment=classic_mtl`) in its place:
    Hydra composes both alike, and a printed command then names the preset it trains, not the default it replaces."""
    chosen = [o for o in extra if o.split("=", 1)[0].lstrip("+") == "experiment"]
    if not chosen:
        return [f"+experiment={default}", *extra]
    return [f"+experiment={chosen[-1].split('=', 1)[1]}", *(o for o in extra if o not in chosen)]


def mtl_task_set(args: argparse.Namespace) -> TaskSet:
    """The multi-task agent's task set (task_set=driving unless --mtl sets another: other driving tasks, e.g.
    'task_set.tasks=[pedestrian,traffic_light,urban]', or gymnasium ids, e.g. experiment=classic_mtl) and each
    task's bar; refused unless it has two or more distinct tasks, each with a bar (task_bars)."""
    from omegaconf import OmegaConf

    cfg = compose_config(with_preset("lane_keep_mtl", args.mtl), return_hydra_config=True)
    tasks = [str(t) for t in cfg.task_set.tasks]
    if len(tasks) < 2 or len(set(tasks)) != len(tasks):
        raise SystemExit(f"--mtl: the bench compares a multi-task agent on two or more distinct tasks with one "
                         f"single-task agent per task; got task_set.tasks={tasks}")
    env_kwargs = OmegaConf.to_container(cfg.task_set.env_kwargs) if cfg.task_set.get("env_kwargs") else None
    bars = task_bars(str(cfg.task_set.kind), tasks, env_kwargs, args.threshold, solve_returns(args))
    return TaskSet(str(cfg.task_set.kind), str(cfg.hydra.runtime.choices.task_set), bars)


def base_overrides(args: argparse.Namespace, task_set: TaskSet) -> dict[str, list[str]]:
    """train.py overrides of the multi-task agent ("mtl") and of each task's single-task agent, as given (a driving
    task's agent composes the task's own task_set group; a gymnasium id's the multi-task agent's group, with that
    one id)."""
    tasks = list(task_set.bars)
    both = [] if args.eval_episodes is None else [f"callbacks.eval.episodes={args.eval_episodes}"]
    mtl_preset, *mtl_extra = with_preset("lane_keep_mtl", args.mtl)
    single_preset, *single_extra = with_preset("lane_keep_dqn", args.single)
    out = {"mtl": [mtl_preset, f"callbacks.eval.every_env_steps={args.eval_every * len(tasks)}", *both, *mtl_extra]}
    budget = [] if "data.total_env_steps" in _override_keys(args.single) else [
        f"data.total_env_steps={args.single_steps}"]
    for task in tasks:
        own = [f"task_set={task}"] if task_set.kind == "driving" else [
            f"task_set={task_set.group}", f"task_set.tasks=[{json.dumps(task)}]"]
        out[task] = [single_preset, *own, f"callbacks.eval.every_env_steps={args.eval_every}",
                     *budget, *both, *single_extra]
    return out


def alignment(base: dict[str, list[str]], explicit: set[str]) -> list[str]:
    """Overrides that give the single-task agents the multi-task agent's SHARED settings ("the same
    hyperparameters" by construction: e.g. lane_keep_mtl's MSE loss and replay ratio 0.25 where lane_keep_dqn has
    Huber and 0.125), leaving out the keys set explicitly with --single (check_alike then judges those)."""

    mtl = shared_settings(compose_config(base["mtl"]))
    single = shared_settings(compose_config(next(o for name, o in base.items() if name != "mtl")))
    out = []
    for key, value in mtl.items():
        if key not in SHARED or key in NOT_ALIGNED or key in explicit or json.dumps(single.get(key)) == json.dumps(value):
            continue
        if isinstance(value, dict):  # e.g. task_set.env_kwargs: set (or add) and remove key by key
            have = single.get(key) or {}
            out += [f"++{key}.{k}={_hydra_value(v)}" for k, v in value.items()
                    if json.dumps(have.get(k)) != json.dumps(v) and f"{key}.{k}" not in explicit]
            out += [f"~{key}.{k}" for k in have if k not in value and f"{key}.{k}" not in explicit]
        else:
            out.append(f"{key}={_hydra_value(value)}")
    return out


def _hydra_value(value) -> str:
    """`value` written as a Hydra override value: [256, 256], true, 0.25, null."""
    return json.dumps(value) if isinstance(value, list | bool) or value is None else str(value)


def agent_overrides(args: argparse.Namespace, task_set: TaskSet | None = None) -> dict[str, list[str]]:
    """The overrides each agent trains with: as given, plus (unless --no-align) the single-task agents aligned with
    the multi-task agent's SHARED settings."""
    base = base_overrides(args, task_set or mtl_task_set(args))
    if not args.align:
        return base
    aligned = alignment(base, _override_keys(args.single))
    n = len(args.single)  # the single-task overrides end with --single's: the alignment goes just before them
    return {name: (o if name == "mtl" else [*o[:len(o) - n], *aligned, *o[len(o) - n:]]) for name, o in base.items()}


def check_overrides(args: argparse.Namespace, task_set: TaskSet | None = None) -> dict[str, list[str]]:
    """Compose every agent's config and refuse a mismatch in a SHARED setting before anything trains; returns the
    overrides."""

    overrides = agent_overrides(args, task_set)
    check_alike({name: shared_settings(compose_config(o)) for name, o in overrides.items()})
    return overrides


def seed_entry(seed: int, bars: Bars, trained: dict[str, dict]) -> dict:
    """One seed's record from its agents' run_seed results ({"mtl": ..., <task>: ...})."""
    mtl = trained["mtl"]
    out = {"seed": seed, "mtl": mtl_entry(mtl["history"], mtl["wall"], bars) | noise_entry(mtl, bars)}
    singles = {task: single_entry(trained[task]["history"], task, trained[task]["wall"], bar)
               | noise_entry(trained[task], {task: bar}) for task, bar in bars.items()}
    out["single"] = combine_singles(singles)
    print(f"seed {seed}: {json.dumps(out)}", flush=True)
    return out


def train_agent(overrides: list[str], seed: int, threads: int) -> dict:
    """One agent's run_seed in a worker process of --jobs (torch threads set there: they are per process)."""
    torch.set_num_threads(threads)
    return run_seed(overrides, seed)


def train_all(args: argparse.Namespace, bars: Bars, overrides: dict[str, list[str]]) -> list[dict]:
    """Every seed's agents, --jobs at a time (one: in this process, in order), each seed's record written to --out
    as soon as its last agent ends; returns the records in seed order. An agent's results do not depend on what
    runs beside it (its seed fixes every draw), only its wall time does."""
    jobs = [(seed, name) for seed in args.seeds for name in overrides]
    trained: dict[int, dict[str, dict]] = {seed: {} for seed in args.seeds}
    runs: list[dict] = []

    def done(seed: int, name: str, result: dict) -> None:
        trained[seed][name] = result
        if len(trained[seed]) == len(overrides):
            runs.append(seed_entry(seed, bars, trained[seed]))
            runs.sort(key=lambda r: args.seeds.index(r["seed"]))
            if args.out:
                args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": runs}, indent=1))

    if args.jobs <= 1:
        for seed, name in jobs:
            done(seed, name, run_seed(overrides[name], seed))
        return runs
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: a forked child would inherit this process's torch thread pools
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(train_agent, overrides[name], seed, args.threads): (seed, name) for seed, name in jobs}
        for future in as_completed(futures):
            done(*futures[future], future.result())
    return runs


def _fmt_steps(entry: dict) -> str:
    if entry["solved_steps"] is None:
        return f"not in {entry['budget_steps'] / 1000:.0f}k" if "budget_steps" in entry else "never"
    return f"{entry['solved_steps'] / 1000:.0f}k"


def _fmt_each(entry: dict) -> str:
    if "each_steps" not in entry:  # a record written before the criterion existed
        return "-"
    return "never" if entry["each_steps"] is None else f"{entry['each_steps'] / 1000:.0f}k"


def report(runs: list[dict], args: argparse.Namespace) -> str:
    """Markdown: steps to solve all and final score per task (median [95% CI]), wall time, the per-seed steps of
    every agent, the multi-task agent's training minutes to solve all, and the ratio (with the issue's targets
    on driving task sets)."""
    bars = run_bars(runs, args.threshold)
    tasks = list(bars)
    driving = all(b.metric == "normalized" for b in bars.values())  # the driving suite, timed as the issue asks
    lines = [
        f"{'Driving tasks' if driving else 'Tasks'} {', '.join(tasks)}, multi-task vs single-task DQN, seeds "
        f"{[r.get('seed') for r in runs]}, {bars_text(bars)}, {datetime.now(timezone.utc):%Y-%m-%d}, "
        f"{os.cpu_count()} CPUs, torch threads {args.threads}"
        + (f", {args.jobs} agents at a time" if getattr(args, "jobs", 1) > 1 and args.merge is None else ""),
        *settings_lines(runs),
        "",
        "| agent | thousand env steps to solve all (summed over tasks) | "
        + " | ".join(f"final {t}" + ("" if b.metric == "normalized" else f" ({b.metric})") for t, b in bars.items())
        + " | wall s |",
        "|---|---|" + "---|" * len(tasks) + "---|",
    ]
    for name in ("mtl", "single"):
        solved = [r[name]["solved_steps"] for r in runs]
        reached = [s for s in solved if s is not None]
        finals = [[r[name]["final"][t] if name == "mtl" else r[name]["tasks"][t]["final"] for r in runs]
                  for t in tasks]
        lines.append(f"| {'multi-task' if name == 'mtl' else f'{len(tasks)} x single-task'} | "
                     f"{summarize([x / 1000 for x in reached], digits=1)} ({len(reached)}/{len(runs)} seeds) | "
                     + " | ".join(summarize(f) for f in finals)
                     + f" | {statistics.median(r[name]['wall'] for r in runs):.0f} |")
    stopped = [label for name, label in (("mtl", "multi-task"), ("single", "single-task"))
               if any((r[name] if name == "mtl" else r[name]["tasks"][t]).get("stopped_solved")
                      for r in runs for t in tasks)]
    if stopped:
        lines += ["", f"Stopped once solved (callbacks.eval.stop_at_normalized / stop_at_return): some "
                      f"{' and '.join(stopped)} runs; their final scores are those of the evaluation that stopped "
                      "them and their wall times end there, so compare env steps to solve, not finals or wall time."]
    lines += ["", "Per seed: env steps until each task is at its bar (budget when never reached)", "",
              "| seed | multi-task (all at once) | " + " | ".join(f"single {t}" for t in tasks)
              + " | singles summed | ratio | multi-task (each task once) | ratio (each once) |",
              "|---|---|" + "---|" * len(tasks) + "---|---|---|---|"]
    for r in runs:
        m, s, e = r["mtl"]["solved_steps"], r["single"]["solved_steps"], r["mtl"].get("each_steps")
        ratio = f"{m / s:.2f}" if m is not None and s is not None else "-"
        each_ratio = f"{e / s:.2f}" if e is not None and s is not None else "-"
        lines.append(f"| {r.get('label', r.get('seed'))} | {_fmt_steps(r['mtl'])} | "
                     + " | ".join(_fmt_steps(r["single"]["tasks"][t]) for t in tasks)
                     + f" | {'-' if s is None else f'{s / 1000:.0f}k'} | {ratio} | "
                     f"{_fmt_each(r['mtl'])} | {each_ratio} |")
    minutes = [r["mtl"]["solved_seconds"] / 60 for r in runs if r["mtl"].get("solved_seconds") is not None]
    if minutes:
        lines.append(f"\nMulti-task training minutes (evaluations excluded) to solve all: "
                     f"{', '.join(f'{x:.1f}' for x in minutes)}; median {statistics.median(minutes):.1f} "
                     f"({len(minutes)}/{len(runs)} seeds solved{'; target <= 15' if driving else ''})")
    pairs = [(r["mtl"]["solved_steps"], r["single"]["solved_steps"]) for r in runs]
    ratios = [m / s for m, s in pairs if m is not None and s is not None]
    if ratios:
        lines.append(f"\nRatio multi-task / single-task env steps to solve all: {summarize(ratios)} "
                     f"({len(ratios)} seeds where both solved{'; target <= 0.6' if driving else ''})")
    never = sum(1 for m, s in pairs if m is None and s is not None)
    if ratios and never:
        # a multi-task run that never solved needs more than any ratio: leaving it out flatters the median
        censored = statistics.median([*ratios, *[float("inf")] * never])
        lines.append(f"Counting the {never} multi-task run(s) that never solved as slower than any: median ratio "
                     + (f"{censored:.3f}" if censored != float("inf") else "not reached (over half never solved)")
                     + f" over {len(ratios) + never} seeds")
    each = [r["mtl"].get("each_steps") / r["single"]["solved_steps"] for r in runs
            if r["mtl"].get("each_steps") is not None and r["single"]["solved_steps"] is not None]
    if each:
        lines.append(f"Ratio with the single-task agents' criterion (each task's first evaluation at its bar, "
                     f"not all at once): {summarize(each)} ({len(each)} seeds)")
    lines += own_steps_report(runs, tasks)
    lines += free_task_report(runs, tasks)
    lines += eval_noise_report(runs, tasks)
    return "\n".join(lines)


def load_record(path: Path) -> dict:
    """A bench_mtl.py --out record; a missing file, broken JSON or another script's record is refused by name."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"--merge {path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--merge {path}: not JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("runs"), list):
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise SystemExit(f"--merge {path}: not a bench_mtl.py record (no 'runs' list; it has {keys}); "
                         "compare_mtl.py records are read by compare_mtl.py")
    return record


def settings_lines(runs: list[dict]) -> list[str]:
    """The settings the table was measured with, as recorded with the multi-task runs (check_runs_alike has made
    them one set); none for records from before 2026-11-29, which did not keep them."""
    settings = next((r["mtl"]["settings"] for r in runs if r["mtl"].get("settings")), None)
    if not settings:
        return []
    shared = ", ".join(f"{k}={json.dumps(settings[k])}" for k in SHARED if k in settings)
    return ["", f"Settings of every agent: {shared}; multi-task `{BATCH_UNIT}={settings.get(BATCH_UNIT, 'total')}`"]


def eval_noise_report(runs: list[dict], tasks: Sequence[str]) -> list[str]:
    """Markdown: per task, the standard error of one evaluation's score on its bar's scale (median over seeds of each
    run's median), for the multi-task and the single-task agents: how far a first crossing of a bar can
    be luck. Empty for records without return_std."""
    rows = []
    for name, label in (("mtl", "multi-task"), ("single", "single-task")):
        entries = [r["mtl"] for r in runs] if name == "mtl" else [r["single"]["tasks"][t] for r in runs for t in tasks]
        per_task = {t: [e["eval_se"][t] for e in entries if t in e.get("eval_se", {})] for t in tasks}
        if any(per_task.values()):
            episodes = sorted({e["eval_episodes"] for e in entries if e.get("eval_episodes")})
            rows.append(f"| {label} | {', '.join(map(str, episodes))} | "
                        + " | ".join(f"{statistics.median(v):.3f}" if v else "-" for v in per_task.values()) + " |")
    if not rows:
        return []
    return ["", "Evaluation noise: standard error of one evaluation's score on each task's bar's scale (normalized "
            "or return; return_std / sqrt(episodes); median over evaluations from the first at the bar, then seeds):",
            "",
            "| agent | episodes per evaluation | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks),
            *rows]


def _kilo(values: list[float]) -> str:
    """'median [CI low, CI high]' in thousands (95% percentile-bootstrap CI of the median)."""
    if len(values) == 1:
        return f"{values[0] / 1000:.0f}k"
    lo, hi = bootstrap_ci(values, median)
    return f"{statistics.median(values) / 1000:.0f}k [{lo / 1000:.0f}k, {hi / 1000:.0f}k]"


def own_steps_report(runs: list[dict], tasks: Sequence[str]) -> list[str]:
    """Markdown: per task, the multi-task agent's own env steps on the task until its first evaluation at its bar
    against the single-task agent's, median [95% CI] over seeds and the median per-seed ratio."""
    runs = [r for r in runs if r["mtl"].get("own_steps") is not None]
    if not runs:
        return []
    lines = ["", "Per task, env steps on that task until its first evaluation at its bar (the "
             "multi-task agent's own steps on the task, counted per task; median [95% CI]; runs where both reached "
             "it):", "",
             "| task | multi-task agent | single-task agent | ratio (median per seed) | seeds |", "|---|---|---|---|---|"]
    sums = []
    for t in tasks:
        pairs = [(r["mtl"]["own_steps"][t], r["single"]["tasks"][t]["solved_steps"]) for r in runs]
        pairs = [(m, s) for m, s in pairs if m is not None and s is not None]
        if not pairs:
            lines.append(f"| {t} | - | - | - | 0 |")
            continue
        lines.append(f"| {t} | {_kilo([m for m, _ in pairs])} | {_kilo([s for _, s in pairs])} "
                     f"| {statistics.median(m / s for m, s in pairs):.2f} | {len(pairs)} |")
    for r in runs:
        own, single = r["mtl"]["own_steps"], r["single"]["solved_steps"]
        if single is not None and None not in own.values():
            sums.append(sum(own.values()) / single)
    if sums:
        lines.append(f"\nSummed over tasks (each task's own steps until it first reached its bar, as if it "
                     f"had stopped collecting there; not a run that was made): {summarize(sums)} of the single-task "
                     f"agents' summed steps ({len(sums)} seeds)")
    return lines


def free_task_report(runs: list[dict], tasks: Sequence[str]) -> list[str]:
    """Markdown: what the ratio would be if the multi-task agent learned one task for nothing and every other
    task in exactly its single-task agent's env steps (1 - the task's share of the single-task agents' summed
    steps; median per seed over seeds where every single-task agent reached its bar): how far sharing can
    get on the easy tasks alone, and so how much the others must gain from each other to reach a target."""
    per_seed = [{t: r["single"]["tasks"][t]["solved_steps"] for t in tasks} for r in runs]
    per_seed = [steps for steps in per_seed if None not in steps.values()]
    if not per_seed:
        return []
    free = {t: statistics.median(1 - steps[t] / sum(steps.values()) for steps in per_seed) for t in tasks}
    return ["", "Were one task learned for nothing and the others in exactly their single-task agents' env steps, the "
            "ratio would be " + ", ".join(f"{v:.2f} with {t} free" for t, v in free.items())
            + f" (1 - the task's share of the single-task agents' summed steps; median per seed, {len(per_seed)} "
            "seeds)"]


def build_parser() -> argparse.ArgumentParser:
    """The command line (the README's cookbook commands are parsed with it in a test)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds to train (default: 0 1 2); with --merge, the records' runs to report (default: all)")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="normalized score at which a task with reference scores (the driving tasks) counts as solved")
    p.add_argument("--solve-return", type=parse_solve_return, nargs="*", default=[], metavar="TASK=RETURN",
                   help="mean eval return at which a task counts as solved (default: normalized >= --threshold for "
                        "driving tasks, gymnasium's reward_threshold for gymnasium ids)")
    p.add_argument("--eval-every", type=int, default=10_000, help="env steps per task between evaluations")
    p.add_argument("--eval-episodes", type=int, default=None,
                   help="episodes per evaluation for every agent (default: the presets' 16)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per agent")
    p.add_argument("--jobs", type=int, default=1,
                   help="agents trained at once, each in its own process (its results do not depend on it; its wall "
                        "time does)")
    p.add_argument("--mtl", nargs="*", default=[], help="extra overrides for the multi-task agent")
    p.add_argument("--single", nargs="*", default=[], help="extra overrides for the single-task agents")
    p.add_argument("--single-steps", type=int, default=300_000,
                   help="env steps per single-task agent (unless --single sets data.total_env_steps)")
    p.add_argument("--no-align", dest="align", action="store_false",
                   help="do not give the single-task agents the multi-task agent's shared settings (loss, lr, "
                        "replay ratio, ...); a mismatch is then refused")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--merge", type=Path, nargs="*", default=None,
                   help="only report: merge the runs of earlier --out files (e.g. seeds run in parallel)")
    p.add_argument("--runs", type=Path, nargs="*", default=[],
                   help="with --merge: train.py run directories (logger=jsonl) replacing their seed's agent")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.merge is not None:
        loaded = [load_record(f) for f in args.merge]
        # runs carry their seed; the oldest records only list them in args.seeds, in run order
        runs = [(r if "seed" in r else r | {"seed": d["args"]["seeds"][i]}) | {"record": f.name}
                for d, f in zip(loaded, args.merge, strict=True) for i, r in enumerate(d["runs"])]
        held = sorted({r["seed"] for r in runs})
        if args.seeds is not None:  # --seeds picks them
            kept = [r for r in runs if r["seed"] in args.seeds]
            if runs and not kept and not args.runs:
                raise SystemExit(f"--merge: the records hold no run of --seeds {args.seeds} (their seeds: {held})")
            if len(kept) < len(runs):
                print(f"--seeds {args.seeds}: {len(kept)} of the records' {len(runs)} runs (their seeds: {held})",
                      file=sys.stderr)
            runs = kept
        runs = sorted(runs, key=lambda r: r["seed"])
        pool_repeated_seeds(runs, replacing=bool(args.runs))
        runs = apply_run_dirs(runs, args.runs, args.threshold, solve_returns(args)) if args.runs else runs
        if not runs:
            raise SystemExit("--merge: no runs to report (the records hold none, and no --runs were given)")
        unknown = [t for t in solve_returns(args) if t not in run_tasks(runs)]
        if unknown:
            raise SystemExit(f"--solve-return names {unknown}, not tasks of the runs ({run_tasks(runs)})")
        check_runs_alike(runs)
        text = report(runs, args)
        print(text)
        if args.out:
            record_args = vars(args) | {"out": str(args.out), "seeds": [r["seed"] for r in runs]}  # the seeds it holds
            args.out.write_text(json.dumps({"args": record_args, "runs": runs, "table": text}, indent=1, default=str))
        return
    args.seeds = [0, 1, 2] if args.seeds is None else args.seeds
    if args.jobs < 1:
        raise SystemExit(f"--jobs {args.jobs}: give the number of agents to train at once, 1 or more")
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds {args.seeds} repeats a seed: one run would train the same draws twice")
    task_set = mtl_task_set(args)  # composed (and its gymnasium ids made) once
    overrides = check_overrides(args, task_set)
    bars = task_set.bars
    for name in list(overrides)[:2]:  # the multi-task agent's and the first single-task agent's
        print(f"{name}: python train.py {shlex.join(overrides[name])}", flush=True)
    runs = train_all(args, bars, overrides)
    text = report(runs, args)
    print(text)
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": runs, "table": text},
                                       indent=1))


if __name__ == "__main__":
    from mtdqn.overrides import script_main

    script_main(main, "bench_mtl.py")
