"""Entry point: `python train.py +experiment=<name> key=value ...` (see README)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train and return the final mean eval return (the objective for Optuna sweeps)."""
    from mtdqn.train import train

    summary = train(cfg)
    values = [v for k, v in summary.items() if k.startswith("eval/") and k.endswith("/return")]
    return sum(values) / len(values) if values else None


if __name__ == "__main__":
    main()
