"""Physics-simulated Franka Panda / UR5e arms (robosuite on MuJoCo) exposing the real drivers' topics."""

from prophrl_common.threads import configure_threads

configure_threads()  # before any module of this package imports torch (OpenMP)

# Sim-only ground truth (geometry_msgs/PoseArray, base frame): the task's objects in
# prophrl_sim.tasks.TASKS[task].object_names order. Real robots have no such topic.
OBJECT_POSES_TOPIC = "/prophrl/sim/object_poses"
