"""scripted_expert_node: the scripted expert (expert.py) on the sim's ground truth, over ROS.

Run: ``ros2 run prophrl_sim scripted_expert_node --ros-args -p robot:=panda_sim -p task:=lift``

Subscribes /prophrl/sim/object_poses (PoseArray, published by sim_node), the robot config's
ee_pose_topic (PoseStamped), /prophrl/instruction (String) and /prophrl/episode (EpisodeEvent:
every START restarts the expert, with seed + the number of episodes seen so far).

output = "action_chunk" (default): publishes prophrl_msgs/ActionChunk (action_space ee_delta_7d,
  action_dim 7, control_period_s of the robot config) on /prophrl/action_chunk at rate_hz, each
  planned from the latest poses (receding horizon), for the executor to run through its safety filter.
output = "twist": drives the arm directly, without an executor: for every new state of the arm (an ee pose
  and object poses with the same stamp, i.e. once per sim step) it sends the first step of a fresh chunk as a
  TwistStamped (delta / control period, base frame) on the robot config's twist_topic and the gripper command
  on its gripper_topic. Planning on the arm's own steps rather than a wall-clock timer keeps one command per
  step when the sim runs slower than real time.

No output while the poses are older than stale_after_s (e.g. the sim is not running), on the node's clock (the
steady clock, or sim time on /clock with use_sim_time).

The expert's stages are timed on the robot's clock, the header stamp of the ee pose it plans from (a sim that
falls behind real time on a busy machine stamps its own, slower time), and each chunk carries that stamp.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
from geometry_msgs.msg import PoseArray, PoseStamped, TwistStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64, String

from prophrl_common.chunks import array_to_chunk
from prophrl_common.node_clock import node_seconds
from prophrl_common.node_parameters import declare_parameters, parameter, read_parameters
from prophrl_common.node_runtime import run_node
from prophrl_common.robots import load_robot_config
from prophrl_msgs.msg import ActionChunk, EpisodeEvent
from prophrl_sim.arm_sim import Pose
from prophrl_sim.expert import ScriptedExpert
from prophrl_sim import OBJECT_POSES_TOPIC
from prophrl_sim.tasks import TASKS, get_task

OUTPUTS = ("action_chunk", "twist")
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _pose(msg) -> Pose:
    p, q = msg.position, msg.orientation
    return Pose(np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w]))


@dataclasses.dataclass(frozen=True)
class ScriptedExpertNodeParameters:
    robot: str = parameter("panda_sim", "robot name in config/robots: control period, ee pose / twist / gripper "
                                        "topics", required=True)
    task: str = parameter("lift", "the sim's task", choices=tuple(TASKS))
    output: str = parameter("action_chunk", "action_chunk: ActionChunks for the executor; twist: the arm's twist "
                                            "and gripper topics directly (no executor)", choices=OUTPUTS)
    horizon: int = parameter(10, "chunk length in control steps (action_chunk output)", minimum=1)
    rate_hz: float = parameter(10.0, "how often a chunk is planned (action_chunk output)", minimum=0.0,
                               exclusive_minimum=True)
    noise_std: float = parameter(0.0, "imperfect demonstrations: Gaussian noise (m, rad per step) on every delta",
                                 minimum=0.0)
    skill: float = parameter(1.0, "the chance that a grasp attempt contains no deliberate mistake", minimum=0.0,
                             maximum=1.0)
    seed: int = parameter(0, "seed of noise and mistakes; episode n uses seed + n")
    stale_after_s: float = parameter(0.5, "no output while the sim's poses are older than this", minimum=0.0,
                                     exclusive_minimum=True)


class ScriptedExpertNode(Node):
    def __init__(self):
        super().__init__("scripted_expert")
        declare_parameters(self, ScriptedExpertNodeParameters)
        self.params = params = read_parameters(self, ScriptedExpertNodeParameters)
        self.robot = load_robot_config(params.robot)
        self.task = get_task(params.task)
        self.output, self.seed, self.stale_after_s = params.output, params.seed, params.stale_after_s
        self.expert = ScriptedExpert(self.task.name, self.robot.control_period_s, horizon=params.horizon,
                                     noise_std=params.noise_std, skill=params.skill, seed=self.seed)
        self._episodes = 0
        self._instruction = ""
        self._ee_pose: Pose | None = None
        self._ee_stamp = None  # builtin_interfaces/Time of the latest ee pose
        self._objects_stamp = None
        self._commanded_stamp = None  # the state the latest twist was planned from
        self._objects: dict[str, Pose] | None = None
        self._received_s = {"ee": -np.inf, "objects": -np.inf}

        self.create_subscription(PoseArray, OBJECT_POSES_TOPIC, self._on_objects, RELIABLE)
        self.create_subscription(PoseStamped, self.robot.ee_pose_topic, self._on_ee_pose, RELIABLE)
        self.create_subscription(String, "/prophrl/instruction", self._on_instruction, LATCHED)
        self.create_subscription(EpisodeEvent, "/prophrl/episode", self._on_episode, RELIABLE)
        if self.output == "action_chunk":
            self._chunk_pub = self.create_publisher(ActionChunk, "/prophrl/action_chunk", RELIABLE)
            self.create_timer(1.0 / params.rate_hz, self._publish_chunk)
        else:
            self._twist_pub = self.create_publisher(TwistStamped, self.robot.twist_topic, RELIABLE)
            self._gripper_pub = self.create_publisher(Float64, self.robot.gripper_topic, RELIABLE)
        self.get_logger().info(f"scripted expert for {self.task.name!r} on {self.robot.name}, output {self.output}")

    def _on_objects(self, msg: PoseArray) -> None:
        if len(msg.poses) != len(self.task.object_names):
            self.get_logger().error(f"{OBJECT_POSES_TOPIC} has {len(msg.poses)} poses; task {self.task.name} "
                                    f"needs {list(self.task.object_names)}", throttle_duration_sec=5.0)
            return
        self._objects = {name: _pose(pose) for name, pose in zip(self.task.object_names, msg.poses)}
        self._objects_stamp = msg.header.stamp
        self._received_s["objects"] = node_seconds(self)
        self._on_new_state()

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        self._ee_pose = _pose(msg.pose)
        self._ee_stamp = msg.header.stamp
        self._received_s["ee"] = node_seconds(self)
        self._on_new_state()

    def _on_new_state(self) -> None:
        if self.output != "twist" or self._ee_stamp is None or self._ee_stamp != self._objects_stamp:
            return
        if self._ee_stamp != self._commanded_stamp:
            self._commanded_stamp = self._ee_stamp
            self._publish_twist()

    def _on_instruction(self, msg: String) -> None:
        self._instruction = msg.data

    def _on_episode(self, msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.START:
            self._episodes += 1
            self.expert.reset(self.seed + self._episodes)
            # Poses from before the reset would restart the new episode's plan from the old scene.
            self._received_s = {"ee": -np.inf, "objects": -np.inf}

    def _plan(self) -> np.ndarray | None:
        now = node_seconds(self)
        if any(now - received > self.stale_after_s for received in self._received_s.values()):
            return None
        stamp_s = self._ee_stamp.sec + self._ee_stamp.nanosec * 1e-9
        return self.expert.plan(self._ee_pose, self._objects, stamp_s)

    def _publish_chunk(self) -> None:
        chunk = self._plan()
        if chunk is not None:
            self._chunk_pub.publish(array_to_chunk(chunk, "ee_delta_7d", self.robot.control_period_s,
                                                   instruction=self._instruction, stamp=self._ee_stamp,
                                                   frame_id=self.robot.base_frame))

    def _publish_twist(self) -> None:
        chunk = self._plan()
        if chunk is None:
            return
        step = chunk[0].astype(float) / self.robot.control_period_s
        twist = TwistStamped()
        twist.header.stamp = self.get_clock().now().to_msg()
        twist.header.frame_id = self.robot.base_frame
        twist.twist.linear.x, twist.twist.linear.y, twist.twist.linear.z = step[:3]
        twist.twist.angular.x, twist.twist.angular.y, twist.twist.angular.z = step[3:6]
        self._twist_pub.publish(twist)
        self._gripper_pub.publish(Float64(data=float(chunk[0, 6])))


def main(argv=None) -> int:
    return run_node(ScriptedExpertNode, argv)


if __name__ == "__main__":
    sys.exit(main())
