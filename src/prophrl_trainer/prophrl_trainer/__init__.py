"""FA-GRPO + FlowScale RL for flow-matching VLA policies, SFT, trainer node, in-process sim collection and rollouts, evaluation."""

from prophrl_common.threads import configure_threads

configure_threads()  # before any module of this package imports torch (OpenMP)
