"""Every test session runs its nodes on a private ROS domain, loopback only, with the project's
threading setup (prophrl_common.threads: OpenMP workers sleep instead of spinning, set before torch
is imported here or in a child process), and with SIGINT handled as in a terminal: a session started in
the background of a non-interactive shell inherits SIGINT ignored, and so would every process the tests
Ctrl-C, which then could not be interrupted."""

import signal

if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from prophrl_common.threads import configure_threads  # noqa: E402

configure_threads()

import os  # noqa: E402

from prophrl_common.testing import isolate_ros_domain  # noqa: E402

isolate_ros_domain(inherit=not os.environ.get("PYTEST_XDIST_WORKER"))   # each xdist worker its own domain


import dataclasses  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# `make test`'s split across pytest-xdist workers
pytest_plugins = ["prophrl_common.parallel_suite"]


@dataclasses.dataclass(frozen=True)
class TrainedLiftPolicy:
    path: Path           # checkpoint directory
    demo_seeds: list     # the initial states the demonstrations started from
    losses: list         # SFT loss per step
    image_size: int


@pytest.fixture(scope="session")
def sft_lift_policy(tmp_path_factory) -> TrainedLiftPolicy:
    """A tiny policy SFT-trained on 4 scripted Panda lift demos (about 45 s on one core), shared by the tests
    that need a policy which really acts: SFT vs untrained success, policy node closing the loop in sim."""
    from prophrl_trainer.collect import CollectSettings, collect_direct
    from prophrl_policy.configuration_vla import get_vla_config
    from prophrl_trainer.sft import SFTConfig, load_demonstrations, train_sft
    from prophrl_data.conversion import bags2dataset

    root = tmp_path_factory.mktemp("sft_lift_policy")
    episodes, image_size = 4, 64
    collect_direct(CollectSettings(episodes=episodes, max_steps=150, image_size=image_size), root / "bags",
                   show_progress=False)
    bags2dataset([root / "bags"], root / "dataset", "panda_sim")
    config = get_vla_config("tiny", hidden_dim=64, num_layers=2, image_size=image_size, horizon=8)
    data = load_demonstrations(root / "dataset", config.horizon)
    path, losses = train_sft(data, config, SFTConfig(steps=600, batch_size=32, learning_rate=1e-3, warmup_steps=20),
                             root / "policy", show_progress=False)
    return TrainedLiftPolicy(path, list(range(episodes)), list(losses), image_size)


# pytest-timeout counts a test's fixture setup. The first test to use the session's trained policy pays for
# collecting and training it (about 45 s on an idle core, several minutes beside busy neighbours), so tests that
# use it get a longer bound.
TRAINED_POLICY_TIMEOUT_S = 900


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "sft_lift_policy" in item.fixturenames:
            item.add_marker(pytest.mark.timeout(TRAINED_POLICY_TIMEOUT_S))
