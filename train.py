"""Entry point: `python train.py +experiment=<name> key=value ...` (see README)."""

import logging
import os
import signal
import sys
import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mtdqn.console import log_to_file, to_log_file
from mtdqn.overrides import check_group_choices, debug_last
from mtdqn.sweep import run_trial
from mtdqn.train import train  # imported here so its OmegaConf resolvers exist in the launcher process too

log = logging.getLogger("mtdqn")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train and return the final mean eval return (the objective for sweeps).

    A single run that fails on bad input (ValueError: the key, the value, what is allowed) ends with that message
    alone (exit status 1; HYDRA_FULL_ERROR=1 for the traceback). In a multirun a failing job is recorded
    (summary.json: status failed, error) and the sweep goes on. Under
    `hparams_search=<preset>` each job is a trial: `hparams_search.seeds_per_trial` seeds trained in turn, the
    objective their mean final `hparams_search.metric`, None (a failed trial, the study goes on) if one fails.
    A SIGTERM (kill, scancel) ends the run as interrupted (summary.json) with exit status 143.
    """
    log_to_file()  # Python warnings and Lightning's messages in the job's train.log too
    try:
        return run(cfg)
    except SIGTERMException:  # Lightning's stop on SIGTERM exits without a code (status 0, as if it had completed):
        sys.exit(128 + signal.SIGTERM)  # 143, the shell's status for a process ended by SIGTERM


def run(cfg: DictConfig) -> float | None:
    if cfg.get("hparams_search"):
        return run_trial(cfg)
    try:
        summary = train(cfg)
    except Exception as exc:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            if isinstance(exc, ValueError) and os.environ.get("HYDRA_FULL_ERROR") != "1":
                # mtdqn raises ValueError for bad input (the key, the value, what is allowed): the message is all
                to_log_file(f"mtdqn: error: {exc}", logging.ERROR)
                sys.exit(f"mtdqn: error: {exc}\n(HYDRA_FULL_ERROR=1 shows where it was raised)")
            to_log_file(traceback.format_exc().rstrip(), logging.ERROR)  # Hydra prints it on the console
            raise
        log.error("job %s failed, the sweep continues: %s: %s", HydraConfig.get().job.num, type(exc).__name__, exc)
        if not isinstance(exc, ValueError):  # a bug, not bad input: where it happened (a single run's error
            traceback.print_exc(file=sys.stderr)  # is printed once, by Hydra)
        return None
    values = [v for k, v in summary.items() if k.startswith("eval/") and k.endswith("/return")]
    return sum(values) / len(values) if values else None


if __name__ == "__main__":
    try:  # a misspelt group choice (+experiment=lane_keep_dqm): one line with the nearest options
        check_group_choices(sys.argv[1:])
    except ValueError as exc:
        sys.exit(f"mtdqn: error: {exc}")
    sys.argv = [sys.argv[0], *debug_last(sys.argv[1:])]  # debug=<name> after +experiment=<name>
    main()
