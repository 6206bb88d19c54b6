"""Experience for one or several tasks: a collector and a replay per task, rounds of (mixed) minibatches."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from mtdqn.collect import Collector, LinearEpsilon
from mtdqn.envs.base import TensorVecEnv
from mtdqn.replay import PrioritizedReplayBuffer, ReplayBuffer
from mtdqn.types import Batch, Round, ShareRule, TaskSpec, finite_number

COMPOSITIONS = ("uniform", "proportional", "weighted")
COLLECT_SCHEDULES = ("fixed", "by_score")
SOLVED_SCORE, SOLVED_SCALE = 0.9, 0.1  # the by-score schedule's defaults (conf/train.yaml's too)
EXPLORATION_CLOCKS = ("summed", "task")
BATCH_SIZE_UNITS = ("total", "per_task")
SOURCE_STRIDE = 1 << 40  # replay indices tagged with their replay (prioritized): index + replay x SOURCE_STRIDE
EnvFactory = Callable[..., TensorVecEnv]  # (num_envs=..., device=...) -> TensorVecEnv
ReplayFactory = Callable[..., ReplayBuffer]  # (num_envs=, obs_dim=, device=, seed=, task_id=, obs_quantum=,
# obs_frames=) -> ReplayBuffer


def check_positive(**values: float) -> None:
    """Raise ValueError naming the first key whose value is not > 0."""
    for key, value in values.items():
        if value is None or value <= 0:
            raise ValueError(f"{key}={value} must be > 0")


def batch_counts(batch_size: int, shares: Sequence[float]) -> list[int]:
    """Split `batch_size` in proportion to `shares` (largest remainder, exact total, deterministic)."""
    total = float(sum(shares))
    if total <= 0 or any(s < 0 for s in shares):
        raise ValueError(f"task shares {list(shares)} must be >= 0 with a positive sum")
    exact = [batch_size * s / total for s in shares]
    counts = [int(x) for x in exact]
    order = sorted(range(len(shares)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[: batch_size - sum(counts)]:
        counts[i] += 1
    return counts


def pad_obs(obs: Tensor, width: int) -> Tensor:
    """Zero-pad the last dim of `obs` to `width` (tasks with smaller observations)."""
    return obs if obs.shape[-1] == width else F.pad(obs, (0, width - obs.shape[-1]))


def concat_batches(parts: list[Batch], obs_width: int) -> Batch:
    """Concatenate per-task stacked batches (G, B_t, ...) along the batch dim, padding observations."""
    if len(parts) == 1 and parts[0].obs.shape[-1] == obs_width:
        return parts[0]  # one task: nothing to join (a copy of an Atari round's observations costs ~0.2 s)
    fields = {}
    for name in Batch._fields:
        tensors = [getattr(b, name) for b in parts]
        if name in ("obs", "next_obs"):
            tensors = [pad_obs(t, obs_width) for t in tensors]
        fields[name] = torch.cat(tensors, dim=1)
    return Batch(**fields)


class MultiTaskStream(IterableDataset):
    """Each round collects from every task in turn, then samples G minibatches composed across tasks."""

    def __init__(self, dm: MultiTaskDataModule, start_env_steps: int,
                 start_task_env_steps: list[int] | None = None) -> None:
        super().__init__()
        self.dm, self.env_steps = dm, start_env_steps
        self.task_env_steps = None if start_task_env_steps is None else list(start_task_env_steps)
        self.obs_stats: Tensor | None = None  # collected-observation moments not yet handed to the model

    def track_obs(self, task: int, obs: Tensor) -> None:
        """Add collected observations of `task` to the [count, sum, sum of squares] sent with the next round."""
        x = pad_obs(obs, self.dm.obs_width).double()
        if self.obs_stats is None:
            self.obs_stats = torch.zeros(len(self.dm.tasks), 1 + 2 * x.shape[-1], dtype=torch.float64,
                                         device=x.device)  # fmt: skip
        self.obs_stats[task] += torch.cat([x.new_full((1,), x.shape[0]), x.sum(0), x.square().sum(0)])

    def collect_round(self) -> tuple[float, Tensor, Tensor]:
        dm, eps, returns, tasks = self.dm, 1.0, [], []
        # per-task clocks need the per-task counts (a checkpoint from before they were kept resumes on the sum)
        per_task = dm.exploration_clock == "task" and self.task_env_steps is not None
        eps_sum, eps_count = 0.0, 0
        for i, (collector, buffer) in enumerate(zip(dm.collectors, dm.buffers, strict=True)):
            n = collector.env.num_envs
            for _ in range(dm.vec_steps[i]):
                if per_task:  # warm-up on the summed steps (when updates start), decay on the task's own
                    eps = 1.0 if self.env_steps < dm.exploration.warmup else \
                        dm.exploration.decay(self.task_env_steps[i])
                    eps_sum, eps_count = eps_sum + eps, eps_count + 1
                else:
                    eps = dm.exploration(self.env_steps)
                transition, episodes = collector.step(eps)
                if dm.track_obs_stats:
                    self.track_obs(i, transition.obs)
                if dm.reward_scale != 1.0 or dm.reward_clip is not None:
                    transition = transition._replace(reward=dm.shape_reward(transition.reward))
                buffer.add(transition)
                self.env_steps += n
                if self.task_env_steps is not None:
                    self.task_env_steps[i] += n
                if episodes is not None:
                    returns.append(episodes.returns)
                    tasks.append(torch.full_like(episodes.lengths, i))
        empty = torch.zeros(0, device=dm.device)
        if eps_count:  # per-task clocks: log the mean epsilon over the round's env steps
            eps = eps_sum / eps_count
        return eps, torch.cat(returns) if returns else empty, torch.cat(tasks) if tasks else empty.long()

    def __iter__(self):
        dm = self.dm
        while self.env_steps < dm.total_env_steps:
            eps, returns, tasks = self.collect_round()
            if self.env_steps < dm.learning_starts:
                continue
            counts = dm.composition_counts()
            if not all(dm.buffers[j].sampleable for i, c in enumerate(counts) for j, _ in dm.sample_plan(i, c)):
                continue  # a task collecting a small share may not have n_step steps per env yet: wait for it
            dm.set_replay_progress(self.env_steps)
            parts = [dm.sample_task(i, c, dm.updates_per_round) for i, c in enumerate(counts) if c > 0]
            obs_stats, self.obs_stats = self.obs_stats, None
            yield Round(concat_batches(parts, dm.obs_width), self.env_steps, eps, returns, tasks, obs_stats,
                        dm.round_obs_quantum)


class MultiTaskDataModule(pl.LightningDataModule):
    """Several tasks: per-task envs, collectors and replays; `batch_size` is split across tasks per round."""

    def __init__(
        self,
        env_factories: Sequence[EnvFactory],
        replay: ReplayFactory,
        exploration: LinearEpsilon,
        tasks: Sequence[TaskSpec],
        num_envs: int = 1,  # parallel envs per task
        total_env_steps: int = 300_000,  # env steps summed over tasks
        env_steps_per_round: int = 768,  # env steps per round, summed over tasks (split by collect_weights)
        replay_ratio: float = 0.125,  # gradient updates per env step (summed over tasks)
        batch_size: int = 192,  # transitions per update: summed over tasks, or per task (batch_size_unit)
        learning_starts: int = 3_000,  # env steps (summed) of random actions before the first update
        seed: int = 0,
        batch_composition: str = "uniform",  # uniform | proportional (to replay sizes) | weighted
        task_weights: Sequence[float] | None = None,  # per-task shares for batch_composition=weighted
        collect_weights: Sequence[float] | None = None,  # per-task shares of each round's env steps (None: equal)
        collect_schedule: str = "fixed",  # fixed | by_score: solved tasks' shares shrink after every evaluation
        collect_solved_score: float = SOLVED_SCORE,  # by_score: a task whose last eval normalized score is >= this ...
        collect_solved_scale: float = SOLVED_SCALE,  # ... collects with its share multiplied by this (back to 1 if it drops
        collect_unsolved_score: float | None = None,  # ... below this; None: collect_solved_score (no hysteresis))
        batch_solved_scale: float = 1.0,  # by_score: a solved task's share of each minibatch is multiplied by this
        exploration_clock: str = "summed",  # summed: epsilon follows the env steps summed over tasks | task: each
        # task's epsilon follows its own env steps (as a single-task agent's would; warm-up still on the sum)
        reward_scale: float = 1.0,  # rewards stored in replay (and so in TD targets) are multiplied by this ...
        reward_clip: float | None = None,  # ... then clipped to [-reward_clip, reward_clip] (None: no clipping)
        eval_env_factories: Sequence[EnvFactory] | None = None,  # evaluation envs (default: env_factories)
        share_fraction: float | Sequence[float] = 0.0,  # share of a task's samples (one number, or one per task)
        # drawn from the other tasks' replays ...
        share_rules: Sequence[Sequence[ShareRule | None]] | None = None,  # ... through rules[source][target]
        batch_size_unit: str = "total",  # total: batch_size is split across tasks | per_task: each update draws
        # batch_size x tasks (mtrl's convention: every task keeps a single-task agent's batch on average)
    ) -> None:
        super().__init__()
        check_positive(**{"data.num_envs": num_envs, "data.total_env_steps": total_env_steps,
                          "data.env_steps_per_round": env_steps_per_round, "data.replay_ratio": replay_ratio,
                          "data.batch_size": batch_size})
        n_tasks = len(tasks)
        if batch_size_unit not in BATCH_SIZE_UNITS:
            raise ValueError(f"data.batch_size_unit={batch_size_unit!r} is not one of {BATCH_SIZE_UNITS}")
        given_batch = f"data.batch_size={batch_size}"
        if batch_size_unit == "per_task":
            batch_size *= n_tasks
            given_batch += f" x {n_tasks} tasks (data.batch_size_unit=per_task)"
        if batch_composition not in COMPOSITIONS:
            raise ValueError(f"data.batch_composition={batch_composition!r} is not one of {COMPOSITIONS}")
        weights = list(task_weights) if task_weights is not None else [1.0] * n_tasks
        if len(weights) != n_tasks:
            raise ValueError(f"data.task_weights={weights} needs one weight per task ({n_tasks})")
        try:
            counts = batch_counts(batch_size, weights)  # validates the weights
        except ValueError as exc:
            raise ValueError(f"data.task_weights={weights}: {exc}") from None
        if batch_composition != "weighted" and len(set(map(float, weights))) > 1:
            raise ValueError(f"data.task_weights={weights} is read only with data.batch_composition=weighted (here "
                             f"{batch_composition!r}): set data.batch_composition=weighted, or drop data.task_weights")
        if batch_size < n_tasks:  # a uniform split of 2 samples over 3 tasks never trained the third
            raise ValueError(f"{given_batch} is smaller than the number of tasks ({n_tasks}): every minibatch needs "
                             "at least one sample of each task; raise data.batch_size")
        starved = [t.name for t, c in zip(tasks, counts, strict=True) if c == 0]
        if batch_composition == "weighted" and starved:
            raise ValueError(f"data.task_weights={weights} gives {starved} 0 of the {batch_size} samples of every "
                             "minibatch: that task would never be trained; give it a larger weight, or leave it out "
                             "of task_set.tasks")
        if env_steps_per_round < num_envs * n_tasks:
            raise ValueError(f"data.env_steps_per_round={env_steps_per_round} must be >= num_envs x tasks "
                             f"= {num_envs * n_tasks}")
        if batch_size > learning_starts:
            raise ValueError(
                f"{given_batch} is larger than the warm-up data.learning_starts={learning_starts}: "
                "the first update would sample more transitions than replay holds"
            )
        if total_env_steps <= learning_starts:
            raise ValueError(
                f"data.total_env_steps={total_env_steps} must exceed data.learning_starts={learning_starts}"
            )
        if not (math.isfinite(reward_scale) and reward_scale > 0):
            raise ValueError(f"data.reward_scale={reward_scale} must be a finite number > 0")
        if reward_clip is not None and not (math.isfinite(reward_clip) and reward_clip > 0):
            raise ValueError(f"data.reward_clip={reward_clip} must be null (no clipping) or a finite number > 0")
        self.reward_scale, self.reward_clip = float(reward_scale), reward_clip
        if eval_env_factories is not None and len(eval_env_factories) != n_tasks:
            raise ValueError(f"eval_env_factories has {len(eval_env_factories)} entries for {n_tasks} tasks")
        self.eval_env_factories = list(eval_env_factories) if eval_env_factories is not None else None
        self.track_obs_stats = False  # set in train_dataloader when the model normalizes observations
        self.updates_per_round = round(env_steps_per_round * replay_ratio)
        if self.updates_per_round < 1:
            raise ValueError(f"data.replay_ratio={replay_ratio} x env_steps_per_round gives < 1 update per round")
        self.env_factories, self.replay_factory, self.exploration = list(env_factories), replay, exploration
        self.tasks, self.num_envs, self.seed = list(tasks), num_envs, seed
        self.total_env_steps, self.batch_size, self.learning_starts = total_env_steps, batch_size, learning_starts
        if collect_weights is not None and (len(collect_weights) != n_tasks or any(
                not (math.isfinite(w) and w > 0) for w in collect_weights)):
            raise ValueError(f"data.collect_weights={list(collect_weights)} needs one share > 0 per task ({n_tasks}) "
                             "(null: equal shares)")
        if exploration_clock not in EXPLORATION_CLOCKS:
            raise ValueError(f"data.exploration_clock={exploration_clock!r} is not one of {EXPLORATION_CLOCKS}")
        self.exploration_clock = exploration_clock
        if collect_schedule not in COLLECT_SCHEDULES:
            raise ValueError(f"data.collect_schedule={collect_schedule!r} is not one of {COLLECT_SCHEDULES}")
        if not (math.isfinite(collect_solved_scale) and 0 < collect_solved_scale <= 1):
            raise ValueError(f"data.collect_solved_scale={collect_solved_scale} must be in (0, 1]")
        if not math.isfinite(collect_solved_score):
            raise ValueError(f"data.collect_solved_score={collect_solved_score} must be a finite normalized score")
        unsolved = collect_solved_score if collect_unsolved_score is None else collect_unsolved_score
        if not (math.isfinite(unsolved) and unsolved <= collect_solved_score):
            raise ValueError(f"data.collect_unsolved_score={collect_unsolved_score} must be null (the same as "
                             f"data.collect_solved_score) or a finite score <= collect_solved_score="
                             f"{collect_solved_score}")
        if collect_schedule == "by_score" and any(t.normalize(0.0) is None for t in tasks):
            raise ValueError("data.collect_schedule=by_score needs a normalized score for every task (reference and "
                             f"random returns); {[t.name for t in tasks if t.normalize(0.0) is None]} have none")
        self.collect_schedule = collect_schedule
        self.collect_solved_score, self.collect_solved_scale = float(collect_solved_score), float(collect_solved_scale)
        self.collect_unsolved_score = float(unsolved)
        if not (math.isfinite(batch_solved_scale) and 0 < batch_solved_scale <= 1):
            raise ValueError(f"data.batch_solved_scale={batch_solved_scale} must be in (0, 1] (1: solved tasks keep "
                             "their share of each minibatch)")
        if batch_solved_scale != 1 and collect_schedule != "by_score":
            raise ValueError(f"data.batch_solved_scale={batch_solved_scale} acts on the tasks that "
                             "data.collect_schedule=by_score marks solved; set collect_schedule=by_score or leave it 1")
        if collect_schedule != "by_score":  # settings only the by-score schedule reads, set to other than their
            # defaults (conf/train.yaml): they would change nothing, silently
            unread = [f"data.{k}={v}" for k, v, default in (
                ("collect_solved_score", collect_solved_score, SOLVED_SCORE),
                ("collect_solved_scale", collect_solved_scale, SOLVED_SCALE),
                ("collect_unsolved_score", collect_unsolved_score, None)) if v != default]
            if unread:
                raise ValueError(f"{', '.join(unread)}: read only with data.collect_schedule=by_score (here "
                                 f"{collect_schedule!r}); set data.collect_schedule=by_score, or leave them out")
        self.batch_solved_scale = float(batch_solved_scale)
        self.solved = [False] * n_tasks  # by_score: which tasks collect the reduced share
        # vector steps per task per round: equal, or the round's env_steps_per_round // num_envs vector steps split
        # by collect_weights (largest remainder)
        if collect_weights is None:
            self.vec_steps = [max(env_steps_per_round // (num_envs * n_tasks), 1)] * n_tasks
        else:
            self.vec_steps = batch_counts(env_steps_per_round // num_envs, [float(w) for w in collect_weights])
            if min(self.vec_steps) < 1:
                raise ValueError(f"data.collect_weights={list(collect_weights)} gives a task no vector step per round "
                                 f"({self.vec_steps} of env_steps_per_round / num_envs = "
                                 f"{env_steps_per_round // num_envs}); raise its share or data.env_steps_per_round")
        self.base_vec_steps = list(self.vec_steps)  # the configured split; by_score scales it
        self.batch_composition, self.task_weights = batch_composition, weights
        self.obs_width = max(t.obs_dim for t in tasks)
        self.share_fractions, self.share_rules = self._check_sharing(share_fraction, share_rules)
        self._share_masks: dict[tuple[int, int], Tensor] = {}
        self.env_steps = 0
        self.task_env_steps: list[int] | None = [0] * n_tasks
        self.stream: MultiTaskStream | None = None
        self.buffers: list[ReplayBuffer] = []
        self.round_obs_quantum: float | None = None  # set in setup: rounds carry uint8 observations on this grid

    def _check_sharing(self, fraction: float | Sequence[float], rules: Sequence[Sequence[ShareRule | None]] | None
                       ) -> tuple[list[float], list[list[ShareRule | None]] | None]:  # fmt: skip
        """Validate data.share_fraction (one number for every task, or one per task) and the task set's share
        rules (one per ordered pair of tasks); returns (fraction per task, rules or None when sharing is off)."""
        n = len(self.tasks)
        many = isinstance(fraction, Sequence) and not isinstance(fraction, str)
        values = list(fraction) if many else [fraction] * n
        shown = values if many else fraction
        if len(values) != n:
            raise ValueError(f"data.share_fraction={shown} needs one number, or one per task ({n})")
        for v in values:
            if not (finite_number(v) and 0 <= v < 1):
                raise ValueError(f"data.share_fraction={shown!r} must be in [0, 1) (one number, or one per task): the "
                                 "share of a task's samples drawn from the other tasks' replays (0: off)")
        values = [float(v) for v in values]
        if not any(values):
            return values, None
        if n < 2:
            raise ValueError(f"data.share_fraction={shown} reuses other tasks' transitions; the task set has one "
                             f"task ({self.tasks[0].name}): set data.share_fraction=0")
        if rules is None or len(rules) != n or any(len(row) != n for row in rules):
            raise ValueError(f"data.share_fraction={shown} needs a share rule for every ordered pair of the "
                             f"{n} tasks (from the task set, see mtdqn.envs.factory.share_rules)")
        for i, row in enumerate(rules):
            for j, rule in enumerate(row):
                if i == j or rule is None:
                    continue
                a, b = self.tasks[i], self.tasks[j]
                if len(rule.obs_mask) != self.obs_width or a.n_actions != b.n_actions or a.obs_dim != b.obs_dim:
                    raise ValueError(f"data.share_fraction: tasks {a.name} and {b.name} differ in observation size "
                                     f"or action count; only tasks with one observation layout can share")
        if not any(rules[j][i] is not None for i in range(n) for j in range(n) if i != j):
            raise ValueError(f"data.share_fraction={shown}: no pair of tasks has a share rule")
        for i, v in enumerate(values):
            if v > 0 and not any(rules[j][i] is not None for j in range(n) if j != i):
                raise ValueError(f"data.share_fraction={shown}: {self.tasks[i].name} would draw {v} of its samples from "
                                 f"the other tasks' replays, but none of them has a share rule into it (see "
                                 f"mtdqn.envs.factory.share_rules); set its fraction to 0")
        return values, [list(row) for row in rules]

    def set_replay_progress(self, env_steps: int) -> None:
        """Tell every replay how far training is (env_steps / total_env_steps): prioritized replay anneals its
        importance-sampling exponent on it (replay.beta_end). Called with the stream's env-step counter, which a
        checkpoint restores, so a resumed run goes on from the beta it stopped at; set on restore too."""
        for b in self.buffers:
            b.set_progress(env_steps / self.total_env_steps)

    def sample_task(self, task: int, count: int, n_batches: int) -> Batch:
        """`n_batches` x `count` samples for `task`: its own replay's, and with the task's data.share_fraction f,
        round(f x count) of them drawn evenly from the replays of the tasks with a rule into it, relabeled:
        observations masked by the rule, task id set to `task`, weight 0 where the transition ends its episode for
        a cause the task does not have (rule.terminal_ok False)."""
        pieces = [self._from_replay(j, self.buffers[j].sample(m, n_batches)) if j == task
                  else self._relabel(self._from_replay(j, self.buffers[j].sample(m, n_batches)), j, task)
                  for j, m in self.sample_plan(task, count)]
        return pieces[0] if len(pieces) == 1 else concat_batches(pieces, self.obs_width)

    def _from_replay(self, source: int, b: Batch) -> Batch:
        """Prioritized replay: each sample's replay index tagged with the replay it was drawn from (+ `source` x
        SOURCE_STRIDE), so a shared sample's TD error updates its priority where it is stored (update_priorities)."""
        if source == 0 or not isinstance(self.buffers[source], PrioritizedReplayBuffer):
            return b
        return b._replace(indices=b.indices + source * SOURCE_STRIDE)

    def sample_plan(self, task: int, count: int) -> list[tuple[int, int]]:
        """[(replay index, samples)] that `count` samples for `task` are drawn from (see sample_task): its own
        replay first, then the shared sources'; empty for count 0."""
        sources = [j for j in range(len(self.tasks)) if self.share_rules is not None and j != task
                   and self.share_rules[j][task] is not None]  # fmt: skip
        n_shared = round(count * self.share_fractions[task]) if sources else 0
        plan = [(task, count - n_shared)] if count > n_shared else []
        if n_shared:
            plan += [(j, m) for j, m in zip(sources, batch_counts(n_shared, [1.0] * len(sources)), strict=True) if m > 0]
        return plan

    def _relabel(self, b: Batch, source: int, target: int) -> Batch:
        """A batch of `source` transitions as samples of `target` (see sample_task)."""
        rule = self.share_rules[source][target]
        mask = self._share_masks.get((source, target))
        if mask is None or mask.device != b.obs.device:
            mask = torch.tensor(rule.obs_mask, dtype=b.obs.dtype, device=b.obs.device)
            self._share_masks[(source, target)] = mask
        width = mask.shape[0]
        obs, next_obs = pad_obs(b.obs, width) * mask, pad_obs(b.next_obs, width) * mask
        weights = b.weights if rule.terminal_ok else b.weights * (b.discounts > 0)
        return b._replace(obs=obs, next_obs=next_obs, weights=weights, task_ids=torch.full_like(b.task_ids, target))

    device = property(lambda self: self.trainer.strategy.root_device if self.trainer else torch.device("cpu"))
    rank = property(lambda self: self.trainer.global_rank if self.trainer else 0)

    def policy(self, task: int, obs: Tensor) -> Tensor:
        """Greedy actions of the trainer's module's behaviour policy for `task`: its `policy_for`, unless it
        defines `behavior_policy_for` (a distillation student collecting with its teacher)."""
        module = self.trainer.lightning_module
        return getattr(module, "behavior_policy_for", module.policy_for)(task)(obs)

    def setup(self, stage: str | None = None) -> None:
        """Per task: envs, replay and collector, with rank- and task-distinct seeds."""
        if self.buffers:
            return
        self.envs, self.collectors = [], []
        for i, (factory, task) in enumerate(zip(self.env_factories, self.tasks, strict=True)):
            seed = self.seed + 100_003 * self.rank + 10_007 * i
            env = factory(num_envs=self.num_envs, device=self.device)
            self.envs.append(env)
            self.buffers.append(self.replay_factory(num_envs=self.num_envs, obs_dim=task.obs_dim,
                                                    device=self.device, seed=seed, task_id=i,
                                                    obs_quantum=getattr(env, "obs_quantum", None),
                                                    obs_frames=getattr(env, "obs_frames", None)))
            self.collectors.append(Collector(env, partial(self.policy, i), seed=seed))
        # every replay stores uint8 on one grid: rounds carry the uint8 observations (see ReplayBuffer.raw_obs)
        quanta = {b.obs_quantum for b in self.buffers}
        self.round_obs_quantum = quanta.pop() if len(quanta) == 1 and None not in quanta else None
        for b in self.buffers:
            b.raw_obs = self.round_obs_quantum is not None

    def composition_counts(self) -> list[int]:
        """Samples per task in each minibatch, as configured by data.batch_composition (a solved task's weight x
        data.batch_solved_scale under collect_schedule=by_score)."""
        if self.batch_composition == "uniform":
            weights = [1.0] * len(self.tasks)
        elif self.batch_composition == "proportional":
            weights = [float(len(b)) for b in self.buffers]
        else:
            weights = [float(w) for w in self.task_weights]
        if self.batch_solved_scale != 1.0:
            weights = [w * (self.batch_solved_scale if solved else 1.0)
                       for w, solved in zip(weights, self.solved, strict=True)]
        counts = batch_counts(self.batch_size, weights)
        for i in [i for i, c in enumerate(counts) if c == 0]:  # a solved task scaled to nothing keeps one sample, as
            counts[counts.index(max(counts))] -= 1  # it keeps one vector step of collection: it is still trained
            counts[i] += 1
        return counts

    def observe_scores(self, scores: Sequence[float | None]) -> dict[str, float]:
        """Called with each evaluation's per-task normalized scores (task order). With collect_schedule=by_score
        a task counts as solved once it scores >= collect_solved_score, and again unsolved only when it scores
        < collect_unsolved_score (hysteresis: a solved task that dips within evaluation noise keeps its reduced
        share; without it, its full share comes back and the unsolved tasks collect less). A solved task collects
        collect_solved_scale x its share from the next round on (every task keeps >= 1 vector step); the round's
        total is unchanged. Returns {"data/<task>/collect_share": share of the round's env steps} to log."""
        if self.collect_schedule == "by_score":
            self.solved = [x is not None and x >= (self.collect_unsolved_score if was else self.collect_solved_score)
                           for was, x in zip(self.solved, scores, strict=True)]
            base = [float(v) for v in self.base_vec_steps]
            weights = [w * (self.collect_solved_scale if solved else 1.0)
                       for w, solved in zip(base, self.solved, strict=True)]
            steps = batch_counts(sum(self.base_vec_steps), weights)
            for i in range(len(steps)):  # every task keeps collecting: take a step from the largest share
                if steps[i] < 1:
                    steps[max(range(len(steps)), key=steps.__getitem__)] -= 1
                    steps[i] = 1
            self.vec_steps = steps
        if len(self.tasks) == 1:
            return {}
        total = sum(self.vec_steps)
        return {f"data/{t.name}/collect_share": v / total for t, v in zip(self.tasks, self.vec_steps, strict=True)}

    def shape_reward(self, reward: Tensor) -> Tensor:
        """clip(reward_scale x r, -reward_clip, reward_clip): what replay stores and TD targets use. Episode
        returns (rollout/..., eval/...) are always the environment's own rewards."""
        if self.reward_scale != 1.0:
            reward = reward * self.reward_scale
        if self.reward_clip is not None:
            reward = reward.clamp(-self.reward_clip, self.reward_clip)
        return reward

    def make_eval_env(self, num_envs: int, task: int = 0, render: bool = False) -> TensorVecEnv:
        """A separate env instance of task `task` for evaluation (nominal, without domain randomization); `render`:
        one that draws frames (`render(i)`, for videos)."""
        factories = self.eval_env_factories or self.env_factories
        extra = {"render_mode": "rgb_array"} if render else {}
        return factories[task](num_envs=num_envs, device=self.device, **extra)

    def update_priorities(self, indices: Tensor, td_errors: Tensor, task_ids: Tensor) -> None:
        """Route TD errors to the (prioritized) replay each sample was drawn from (tagged in its index, see
        _from_replay; a shared sample's is another task's replay than its task id's). One priority per stored
        transition: the latest TD error of whichever task last trained on it; importance weights correct for the
        sampling whatever the priorities."""
        source, local = indices // SOURCE_STRIDE, indices % SOURCE_STRIDE
        for i, buf in enumerate(self.buffers):
            mask = source == i
            if bool(mask.any()):
                buf.update_priorities(local[mask], td_errors[mask])

    def train_dataloader(self) -> DataLoader:
        module = self.trainer.lightning_module if self.trainer is not None else None
        self.track_obs_stats = bool(getattr(module, "wants_obs_stats", False))
        for c in self.collectors:
            c.seed += self.env_steps  # fresh episodes after a resume
        self.stream = MultiTaskStream(self, start_env_steps=self.env_steps, start_task_env_steps=self.task_env_steps)
        return DataLoader(self.stream, batch_size=None, num_workers=0)

    @property
    def round_env_steps(self) -> int:
        """Env steps one round collects: data.env_steps_per_round in whole vector steps of every task's envs (the
        by-score schedule moves them between tasks and keeps their sum)."""
        return sum(self.base_vec_steps) * self.num_envs

    def budget_note(self) -> str | None:
        """A line saying where training ends when data.total_env_steps is not a whole number of rounds (whole
        rounds are collected, so the run goes on to the end of the round that crosses the budget); else None."""
        per_round, total = self.round_env_steps, self.total_env_steps
        if total % per_round == 0:
            return None
        rounds = -(-total // per_round)
        return (f"data.total_env_steps={total} is not a whole number of rounds of {per_round:,} env steps "
                f"(data.env_steps_per_round in whole vector steps of data.num_envs): the run collects {rounds:,} "
                f"rounds, {rounds * per_round:,} env steps")

    def current_env_steps(self) -> int:
        """Env steps collected so far on this rank, summed over tasks."""
        return self.stream.env_steps if self.stream is not None else self.env_steps

    def current_task_env_steps(self) -> list[int] | None:
        """Env steps collected so far on this rank per task (task order); None after resuming a checkpoint
        written before the per-task count was kept."""
        steps = self.stream.task_env_steps if self.stream is not None else self.task_env_steps
        return None if steps is None else list(steps)

    def state_dict(self) -> dict:
        """Counters, every task's replay and collector RNG."""
        return {
            "env_steps": self.current_env_steps(),
            "task_env_steps": self.current_task_env_steps(),
            "replays": [b.state_dict() for b in self.buffers],
            "collector_rngs": [c.generator.get_state() for c in self.collectors],
            "collector_seeds": [c.seed for c in self.collectors],
            "torch_rng": torch.get_rng_state(),
            "vec_steps": list(self.vec_steps),
            "collect_solved": list(self.solved),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved. Under DDP, Lightning hands every rank rank 0's state (its checkpoint):
        a rank > 0 restores its own, saved beside it (EnvStepCheckpoint), or refuses to train on as a copy of rank 0."""
        state = self.own_rank_state(state)
        self.env_steps = int(state["env_steps"])
        task_steps = state.get("task_env_steps")  # absent in checkpoints from before 2026-11-29
        self.task_env_steps = None if task_steps is None else [int(v) for v in task_steps]
        for buf, s in zip(self.buffers, state["replays"], strict=True):
            buf.load_state_dict(s)
        self.set_replay_progress(self.env_steps)
        for c, rng, seed in zip(self.collectors, state["collector_rngs"], state["collector_seeds"], strict=True):
            c.generator.set_state(rng)
            c.seed, c.obs = int(seed), None
        torch.set_rng_state(state["torch_rng"])
        if "vec_steps" in state and self.collect_schedule == "by_score":
            self.vec_steps = [int(v) for v in state["vec_steps"]]
        if "collect_solved" in state:  # absent in checkpoints from before 2026-11-29: solved again at the next eval
            self.solved = [bool(v) for v in state["collect_solved"]]

    def own_rank_state(self, state: dict) -> dict:
        """This rank's data state: `state` itself on rank 0 or one process, else the file beside the checkpoint."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size <= 1 or trainer.global_rank == 0:
            return state
        from mtdqn.callbacks.checkpoint import load_checkpoint, rank_data_path

        ckpt = getattr(trainer, "ckpt_path", None)
        side = rank_data_path(ckpt, trainer.global_rank) if ckpt else None
        if side is None or not side.is_file():
            raise ValueError(f"ckpt_path={ckpt!r}: no {side.name if side else 'per-rank data file'} beside it: rank "
                             f"{trainer.global_rank}'s replay and env seeds were not saved (a checkpoint from one "
                             "process, or from before per-rank data was kept); every rank would resume as a copy of "
                             "rank 0 (the same episodes, the same minibatches). Resume with trainer.devices=1")
        saved = load_checkpoint(side)
        if int(saved["env_steps"]) != int(state["env_steps"]):
            raise ValueError(f"{side}: rank {trainer.global_rank}'s data was saved at {int(saved['env_steps']):,} env "
                             f"steps, the checkpoint at {int(state['env_steps']):,} (a save cut short)")
        return saved["data"]

    def teardown(self, stage: str | None = None) -> None:
        for env in getattr(self, "envs", []):
            env.close()
