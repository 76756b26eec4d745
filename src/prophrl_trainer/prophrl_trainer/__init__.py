"""FA-GRPO + FlowScale RL for flow-matching VLA policies, SFT, trainer node, evaluation."""
