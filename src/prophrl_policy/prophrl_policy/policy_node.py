"""Policy node: camera + robot state + instruction -> ActionChunks, the same in real, sim and imagination.

A thin lifecycle adapter around prophrl_policy.modeling_vla.VLAPolicy (Nav2 style; with `autostart`
it configures and activates itself). Every `replan_period_s` it runs the policy on the latest
camera frame, end-effector pose, gripper state and instruction, and publishes a chunk (receding
horizon: the executor switches to the newest chunk). With `replan_period_s: 0` it runs on every
camera frame instead (frames that arrive during inference are dropped). The chunk's header stamp is the camera
frame's, so camera -> chunk latency can be measured downstream. `~/load_policy` (LoadPolicy)
hot-swaps the weights atomically: a checkpoint that fails to load leaves the old one serving.

A checkpoint is served only where it fits (`checkpoint_path` at configure, and every LoadPolicy): the
robot, action space (ee_delta_7d) and state layout it records (embodiment.json) must be this node's
`robot`, what it publishes and the state it builds; checkpoints that record none are served with a
warning (see prophrl_policy.embodiment). LoadPolicy's `policy_version` must be higher than the version
being served (the `checkpoint_path` one is version 0): an equal or lower version is refused, so a
late or repeated push never replaces newer weights.

Where the time of a chunk goes is measured per stage (ms, the last 1000 chunks): `frame_age` (the camera
frame's stamp to the start of its processing: transport, and waiting for the executor or a running
inference), `prepare` (frame -> observation), `inference` (predict_action_chunk) and `publish` (chunk message
built and published). Their p50/p95 are logged every `latency_log_period_s` and published on ``/diagnostics``
every `diagnostics_period_s`, with the chunk counters.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Float64, String

from prophrl_common.chunks import ACTION_SPACES, POLICY_STATE_NAMES, array_to_chunk
from prophrl_common.config_io import ConfigError
from prophrl_common.node_clock import node_seconds
from prophrl_common.node_parameters import declare_parameters, parameter, read_parameters
from prophrl_common.node_runtime import run_node
from prophrl_common.images import ImageConversionError, to_rgb8
from prophrl_common.robots import load_robot_config
from prophrl_common.stage_latency import StageLatencies
from prophrl_msgs.msg import ActionChunk
from prophrl_msgs.srv import LoadPolicy
from prophrl_policy.embodiment import check_embodiment
from prophrl_policy.modeling_vla import Observation, VLAPolicy
from prophrl_policy.transforms import policy_state

ACTION_SPACE = "ee_delta_7d"
STAGES = ("frame_age", "prepare", "inference", "publish")

SENSOR_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclasses.dataclass(frozen=True)
class PolicyNodeParameters:
    checkpoint_path: str = parameter("", "a checkpoint directory from `prophrl policy sft`", required=True)
    robot: str = parameter("panda_sim", "robot config (config/robots name or YAML path): ee pose and gripper topics")
    autostart: bool = parameter(True, "configure and activate at start-up")
    image_topic: str = parameter("/camera/image_raw", "camera frames the policy acts on")
    instruction_topic: str = parameter("/prophrl/instruction", "task instruction (latched)")
    instruction: str = parameter("", "the instruction used until one arrives on instruction_topic")
    action_chunk_topic: str = parameter("/prophrl/action_chunk", "where the chunks are published")
    replan_period_s: float = parameter(0.1, "a new chunk every replan_period_s (receding horizon); "
                                            "0: on every camera frame", minimum=0.0)
    mode: str = parameter("ode", "ode: deterministic deployment; sde: Flow-GRPO's stochastic sampler",
                          choices=("ode", "sde"))
    num_steps: int = parameter(0, "denoising steps per chunk (0: the checkpoint's sampler; a `prophrl policy distill` "
                                  "checkpoint samples its few steps as trained)", minimum=0)
    noise_level: float = parameter(0.0, "sde mode: the SDE noise level (0: the checkpoint's sampler)", minimum=0.0)
    seed: int = parameter(0, "seed of the sampler's noise")
    device: str = parameter("cpu", "torch device")
    torch_threads: int = parameter(1, "intra-op CPU threads for inference (more helps only large models on idle "
                                      "cores)", minimum=1)
    max_state_age_s: float = parameter(1.0, "do not act on an end-effector pose older than this",
                                       minimum=0.0, exclusive_minimum=True)
    latency_log_period_s: float = parameter(10.0, "period of the per-stage latency log line",
                                            minimum=0.0, exclusive_minimum=True)
    diagnostics_period_s: float = parameter(1.0, "period of the /diagnostics status (per-stage latencies, "
                                                 "counters)", minimum=0.0, exclusive_minimum=True)


class PolicyNode(LifecycleNode):
    def __init__(self, node_name: str = "policy_node"):
        super().__init__(node_name)
        declare_parameters(self, PolicyNodeParameters)
        self.params = PolicyNodeParameters()
        self.policy: VLAPolicy | None = None
        self.policy_version = 0
        self._image: Image | None = None
        self._ee_pose: np.ndarray | None = None
        self._ee_stamp = 0.0
        self._gripper = 0.0
        self._entities = []
        self.latencies = StageLatencies(STAGES)
        self.chunks_published = 0
        self.active = False

    @property
    def autostart(self) -> bool:
        return bool(self.get_parameter("autostart").value)

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.params = read_parameters(self, PolicyNodeParameters)
            self.robot = load_robot_config(self.params.robot)
            self.device = torch.device(self.params.device)
            # One intra-op thread: a small policy gains little from more, and spinning OpenMP
            # workers would starve the camera/executor processes sharing this CPU.
            torch.set_num_threads(self.params.torch_threads)
            self.policy = self._load(self.params.checkpoint_path)
        except (ConfigError, RuntimeError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.generator = torch.Generator(device=self.device).manual_seed(self.params.seed)
        self.instruction = self.params.instruction
        self.chunk_pub = self.create_publisher(ActionChunk, self.params.action_chunk_topic, 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._entities = [
            self.chunk_pub, self._diag_pub,
            self.create_subscription(Image, self.params.image_topic, self._on_image, SENSOR_QOS),
            self.create_subscription(PoseStamped, self.robot.ee_pose_topic, self._on_ee_pose, 10),
            self.create_subscription(Float64, self.robot.gripper_topic, self._on_gripper, 10),
            self.create_subscription(String, self.params.instruction_topic, self._on_instruction, LATCHED),
            self.create_service(LoadPolicy, "~/load_policy", self._on_load_policy),
        ]
        self.get_logger().info(f"configured: robot {self.robot.name}, policy {self.policy.config.name} "
                               f"from {self.params.checkpoint_path}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._timers = [self.create_timer(self.params.latency_log_period_s, self._log_latency),
                        self.create_timer(self.params.diagnostics_period_s, self._publish_diagnostics)]
        if self.params.replan_period_s > 0:
            self._timers.append(self.create_timer(self.params.replan_period_s, self._on_timer))
        self.active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        for timer in self._timers:
            self.destroy_timer(timer)
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        for entity in self._entities:
            entity.destroy()
        self._entities = []
        self.policy = None
        return TransitionCallbackReturn.SUCCESS

    # ---------------------------------------------------------------- inputs
    def _on_image(self, msg: Image) -> None:
        self._image = msg
        if self.active and self.params.replan_period_s == 0:
            self._on_timer()

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        self._ee_pose = np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w])
        self._ee_stamp = node_seconds(self)

    def _on_gripper(self, msg: Float64) -> None:
        if np.isfinite(msg.data):
            self._gripper = float(msg.data)

    def _on_instruction(self, msg: String) -> None:
        self.instruction = msg.data

    # ---------------------------------------------------------------- inference
    def _observation(self, image: Image) -> Observation:
        state = policy_state(self._ee_pose, self._gripper)
        return Observation.from_frames(to_rgb8(image)[None], [self.instruction], state[None], self.policy.config,
                                       device=self.device)

    def _on_timer(self) -> None:
        image = self._image
        if image is None or self._ee_pose is None:
            return
        begin, clock_now = time.perf_counter(), self.get_clock().now().nanoseconds * 1e-9
        if node_seconds(self) - self._ee_stamp > self.params.max_state_age_s:
            self.get_logger().warning("end-effector pose is stale: not publishing", throttle_duration_sec=5.0)
            return
        try:
            obs = self._observation(image)
        except ImageConversionError as exc:
            self.get_logger().error(f"camera frame rejected: {exc}", throttle_duration_sec=5.0)
            return
        policy, version = self.policy, self.policy_version
        sampler = policy.sampler_with(self.params.num_steps, self.params.noise_level)
        prepared = time.perf_counter()
        with torch.inference_mode():
            sample = policy.predict_action_chunk(obs, mode=self.params.mode, sampler=sampler, generator=self.generator)
        actions = sample.actions[0].cpu().numpy()
        inferred = time.perf_counter()
        if not np.isfinite(actions).all():
            self.get_logger().error("policy produced NaN/inf actions: chunk dropped")
            return
        self.chunk_pub.publish(array_to_chunk(actions, ACTION_SPACE, self.robot.control_period_s,
                                              policy_version=version, instruction=self.instruction,
                                              stamp=image.header.stamp, frame_id=self.robot.base_frame))
        self.chunks_published += 1
        stages = {"prepare": (prepared - begin) * 1e3, "inference": (inferred - prepared) * 1e3,
                  "publish": (time.perf_counter() - inferred) * 1e3}
        stamp = image.header.stamp.sec + image.header.stamp.nanosec * 1e-9
        if stamp > 0:  # an unstamped frame has no age; stamps are on the ROS clock (sim time under use_sim_time)
            stages["frame_age"] = (clock_now - stamp) * 1e3
        self.latencies.add(**stages)

    def _log_latency(self) -> None:
        if self.latencies.count("inference"):
            self.get_logger().info(f"latency p50/p95 ms over the last {self.latencies.count('inference')} chunks: "
                                   f"{self.latencies.summary()}")

    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(name=f"{self.get_name()}: policy", level=DiagnosticStatus.OK,
                                  hardware_id=self.params.checkpoint_path,
                                  message=f"serving policy version {self.policy_version}")
        values = [("chunks_published", str(self.chunks_published)), ("policy_version", str(self.policy_version)),
                  *self.latencies.key_values()]
        status.values = [KeyValue(key=k, value=v) for k, v in values]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)

    # ---------------------------------------------------------------- hot swap
    def _load(self, path: str) -> VLAPolicy:
        """The checkpoint at `path`, if it fits this node (ConfigError naming what does not)."""
        policy = VLAPolicy.from_pretrained(path, map_location=str(self.device)).to(self.device).eval()
        if policy.config.robot_action_dim != ACTION_SPACES[ACTION_SPACE]:
            raise ConfigError(f"{path}: policy emits {policy.config.robot_action_dim}-D actions, {ACTION_SPACE} "
                              f"needs {ACTION_SPACES[ACTION_SPACE]}")
        if policy.config.state_dim != len(POLICY_STATE_NAMES):
            raise ConfigError(f"{path}: policy takes a {policy.config.state_dim}-D state, this node provides "
                              f"{len(POLICY_STATE_NAMES)} ({', '.join(POLICY_STATE_NAMES)})")
        try:
            warning = check_embodiment(policy.embodiment, self.robot.name, ACTION_SPACE, POLICY_STATE_NAMES)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if warning:
            self.get_logger().warning(f"{path}: {warning}")
        return policy

    def _on_load_policy(self, request: LoadPolicy.Request, response: LoadPolicy.Response) -> LoadPolicy.Response:
        serving = self.policy_version
        if request.policy_version <= serving:
            response.success = False
            response.message = (f"kept policy version {serving}: version {request.policy_version} is not newer "
                                f"(LoadPolicy versions must increase)")
            self.get_logger().error(f"LoadPolicy refused: {response.message}")
            return response
        try:
            new_policy = self._load(request.checkpoint_path)
        except (ConfigError, RuntimeError, OSError) as exc:
            response.success = False
            response.message = f"kept policy version {self.policy_version}: {exc}"
            self.get_logger().error(f"LoadPolicy failed: {exc}")
            return response
        self.policy, self.policy_version = new_policy, int(request.policy_version)
        response.success = True
        response.message = f"serving policy version {request.policy_version} from {request.checkpoint_path}"
        self.get_logger().info(response.message)
        return response


def main(args: list[str] | None = None) -> int:
    # One thread runs every callback, inference included (run_node's single-threaded executor). A thread pool
    # (rclpy's MultiThreadedExecutor) added 5-6 ms to every camera -> chunk on a 2-core machine
    # (bench/policy_latency.py) for one gain: a LoadPolicy load (about 0.1 s) next to inference. Here a load
    # delays at most one chunk, while the executor keeps running the chunk it has.
    return run_node(PolicyNode, args)


if __name__ == "__main__":
    sys.exit(main())
