"""Prophet checkpoints shipped inside this package, by name: where each one is and how it was made.

A name can stand wherever a Prophet checkpoint directory is asked for (`resolve_prophet`): e.g.
`prophrl worldmodel adapt --checkpoint sim_tiny_32px`, or `prophrl demo`, which adapts one of these to the
demo's own episodes instead of training a Prophet from scratch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prophrl_common.config_io import ConfigError
from prophrl_worldmodel.modeling_prophet import WEIGHTS_NAME

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained_models"


@dataclasses.dataclass(frozen=True)
class PretrainedProphet:
    name: str
    description: str
    config: str          # the named ProphetConfig it was trained with (configuration_prophet.PROPHET_CONFIGS)
    regenerate: str      # the script that rebuilds it from nothing (corpus collection + pretraining)

    @property
    def path(self) -> Path:
        return PRETRAINED_DIR / self.name


PRETRAINED_PROPHETS: dict[str, PretrainedProphet] = {
    "sim_tiny_32px": PretrainedProphet(
        name="sim_tiny_32px",
        description="tiny_32px_start_frame pretrained on the simulated corpus: Panda and UR5e, lift / stack / "
                    "door, agentview and sideview with camera jitter, scripted and noisy experts; one clip = 2 "
                    "frames x 5 actions = one chunk of the tiny policy",
        config="tiny_32px_start_frame",
        regenerate="scripts/pretrain_shipped_prophet.sh"),
}


def resolve_prophet(name_or_path: str | Path) -> Path:
    """A shipped Prophet's directory when `name_or_path` is one of PRETRAINED_PROPHETS' names, else the path
    itself. A shipped name whose files are missing (a partial install) is a ConfigError."""
    text = str(name_or_path)
    if text not in PRETRAINED_PROPHETS:
        return Path(name_or_path)
    path = PRETRAINED_PROPHETS[text].path
    if not (path / WEIGHTS_NAME).is_file():
        raise ConfigError(f"the shipped Prophet '{text}' is missing its weights at {path}; reinstall prophrl_worldmodel "
                          f"or rebuild it with {PRETRAINED_PROPHETS[text].regenerate}")
    return path
