"""The held-out evaluation protocol in the sim: the seeds no demonstration or RL start uses, and how many control
steps an evaluation episode may take (the scripted expert lifts in 55-70). Every evaluation command defaults to
these (`prophrl eval`, `prophrl policy eval`, the benches); this module imports nothing heavy, so CLI parsers can."""

HELD_OUT_SEED_BASE = 100_000
EVAL_MAX_STEPS = 150
