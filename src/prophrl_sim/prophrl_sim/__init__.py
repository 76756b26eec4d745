"""Physics-simulated Franka Panda / UR5e arms (robosuite on MuJoCo) exposing the real drivers' topics."""

from prophrl_common.threads import configure_threads

configure_threads()  # before any module of this package imports torch (OpenMP)

from prophrl_sim.glfw_library import use_bundled_glfw  # noqa: E402

use_bundled_glfw()  # before robosuite imports glfw: no version-probing subprocesses

# Sim-only ground truth (geometry_msgs/PoseArray, base frame): the task's objects in
# prophrl_sim.tasks.TASKS[task].object_names order. Real robots have no such topic.
OBJECT_POSES_TOPIC = "/prophrl/sim/object_poses"
