"""Pure loss functions."""

from mtdqn.losses.td import LOSSES, polyak_update, td_loss, td_target

__all__ = ["LOSSES", "polyak_update", "td_loss", "td_target"]
