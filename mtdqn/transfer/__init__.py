"""Transfer strategies selected by conf/transfer: finetune, freeze, ewc, distill (none = from scratch)."""

from mtdqn.transfer.config import MODES, EWCConfig, TransferConfig
from mtdqn.transfer.loading import LoadReport, SourceCheckpoint, load_matching, load_source, teachers_for
from mtdqn.transfer.modes import apply_transfer

__all__ = [
    "MODES",
    "EWCConfig",
    "LoadReport",
    "SourceCheckpoint",
    "TransferConfig",
    "apply_transfer",
    "load_matching",
    "load_source",
    "teachers_for",
]
