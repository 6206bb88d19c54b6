"""The evaluation callback the side-by-side benchmarks give Stable-Baselines3: greedy episodes of the SB3 Q-network
on mtdqn's evaluation code (the same seeds as mtdqn's evaluation callback), timed so the benchmarks exclude it."""

from __future__ import annotations

import time

from mtdqn.evaluation.episodes import run_episodes


def sb3_eval_callback(eval_env, every: int, seed: int):
    """An SB3 callback evaluating at the rollout that reaches each multiple of `every` env steps (right after the
    previous round of updates, as mtdqn's callback does) and at the end; `history` holds (env steps, training
    seconds, mean return), `eval_seconds` the time spent evaluating."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Eval(BaseCallback):
        def _on_training_start(self) -> None:
            self.t0, self.eval_seconds, self.last, self.history = time.perf_counter(), 0.0, 0, []

        def evaluate(self) -> None:
            t = time.perf_counter()
            q_net = self.model.q_net
            returns = run_episodes(lambda obs: q_net(obs).argmax(-1), eval_env, seed=seed)
            self.eval_seconds += time.perf_counter() - t
            seconds = time.perf_counter() - self.t0 - self.eval_seconds
            self.history.append((self.num_timesteps, seconds, float(returns.mean())))
            self.last = self.num_timesteps

        def _on_rollout_start(self) -> None:
            if self.num_timesteps // every > self.last // every:
                self.evaluate()

        def _on_step(self) -> bool:
            return True

        def _on_training_end(self) -> None:
            self.evaluate()

    return Eval()
