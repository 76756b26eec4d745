"""In-process collection and evaluation look through the camera the sim node uses: the task's own view.

Regression: both defaulted to agentview, while the sim node (the demonstrations of `prophrl demo`) uses the
task's default view, sideview for door (robosuite's agentview hides the door behind the arm). A door demo's
play episodes and its evaluation then saw a different scene from the demonstrations the policy learnt from.
"""

import numpy as np

from prophrl_common.robots import load_robot_config
from prophrl_data.alignment import load_episode
from prophrl_sim.arm_sim import ArmSim
from prophrl_trainer.collect import CollectSettings, collect_direct
from prophrl_trainer.evaluation import EvalSettings


def test_collection_and_evaluation_default_to_the_tasks_own_view(tmp_path):
    collect_direct(CollectSettings(robot="panda_sim", task="door", episodes=1, first_seed=7, max_steps=4,
                                   image_size=32), tmp_path, show_progress=False)
    (bag,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    recorded = load_episode(bag, load_robot_config("panda_sim")).frames[0]

    def first_frame(camera):
        sim = ArmSim("panda_sim", "door", camera=camera, image_width=32, image_height=32)
        sim.reset(7)
        return sim.render()
    np.testing.assert_array_equal(recorded, first_frame(""))   # what the sim node shows for door
    assert np.abs(recorded.astype(int) - first_frame("agentview")).mean() > 5
    for settings in (CollectSettings(task="door"), EvalSettings(task="door")):
        assert ArmSim("panda_sim", "door", camera=settings.camera, image_width=8, image_height=8).camera == "sideview"
