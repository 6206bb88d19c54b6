"""mtdqn: config-driven multi-task and transfer deep Q-learning."""

__version__ = "0.1.0"
