"""Compression stage: distillation, pruning, quantization of a trained Q-network, and the report of their cost."""

from mtdqn.compression.config import METHODS, CompressionSettings, normalize_chains
from mtdqn.compression.policy import QPolicy, net_builder, wrap
from mtdqn.compression.report import REPORT_FIELDS, run_compression, summary_metrics

__all__ = ["METHODS", "REPORT_FIELDS", "CompressionSettings", "QPolicy", "net_builder", "normalize_chains",
           "run_compression", "summary_metrics", "wrap"]
