"""Teleop node: keyboard (terminal) or SpaceMouse -> one-step ee_delta_7d ActionChunks + episode events.

Parameters: TeleopNodeParameters. With an empty reset_service (a real robot) this node publishes the START
event itself.
"""

from __future__ import annotations

import dataclasses
import os
import select
import sys
import termios
import threading
import tty
import uuid

import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from std_msgs.msg import String
from std_srvs.srv import Trigger

from prophrl_common.chunks import array_to_chunk
from prophrl_common.node_parameters import declare_parameters, parameter, read_parameters
from prophrl_common.node_runtime import run_node
from prophrl_common.robots import load_robot_config
from prophrl_msgs.msg import ActionChunk, EpisodeEvent
from prophrl_robot.teleop import (KEYBOARD_HELP, EpisodeCommand, KeyboardTeleop, SpaceMouseTeleop,
                                   TeleopScales)

LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclasses.dataclass(frozen=True)
class TeleopNodeParameters:
    device: str = parameter("keyboard", "the operator's input device", choices=("keyboard", "spacemouse"))
    robot: str = parameter("panda_sim", "robot config (config/robots name or YAML path): its control period",
                           required=True)
    instruction: str = parameter("", "instruction of the episodes (until one arrives on /prophrl/instruction)")
    action_chunk_topic: str = parameter("/prophrl/action_chunk", "where the one-step chunks go", required=True)
    episode_topic: str = parameter("/prophrl/episode", "where START / SUCCESS / FAILURE events go", required=True)
    reset_service: str = parameter("", "std_srvs/Trigger called at each new episode (e.g. /sim/reset); empty: none")
    translation_step_m: float = parameter(0.01, "translation per control step at full input", minimum=0.0,
                                          exclusive_minimum=True)
    rotation_step_rad: float = parameter(0.05, "rotation per control step at full input", minimum=0.0,
                                         exclusive_minimum=True)


class TeleopNode(Node):
    def __init__(self):
        super().__init__("teleop")
        declare_parameters(self, TeleopNodeParameters)
        params = read_parameters(self, TeleopNodeParameters)
        self.device, self.instruction = params.device, params.instruction
        chunk_topic, episode_topic, reset_service = params.action_chunk_topic, params.episode_topic, params.reset_service
        scales = TeleopScales(params.translation_step_m, params.rotation_step_rad)
        self.robot = load_robot_config(params.robot)

        self.chunk_pub = self.create_publisher(ActionChunk, chunk_topic, 10)
        self.episode_pub = self.create_publisher(EpisodeEvent, episode_topic, 10)
        self.create_subscription(String, "/prophrl/instruction", self._on_instruction, LATCHED)
        self.create_subscription(EpisodeEvent, episode_topic, self._on_episode, 10)
        self.reset_client = self.create_client(Trigger, reset_service) if reset_service else None
        self.episode_id = ""
        self.quit = threading.Event()
        self.policy_version = 0

        if self.device == "keyboard":
            self.keyboard = KeyboardTeleop(scales)
            self._reader = threading.Thread(target=self._read_keys, daemon=True)
            self._reader.start()
            print(KEYBOARD_HELP, file=sys.stderr, flush=True)
        else:
            self.spacemouse = SpaceMouseTeleop(scales)
            self.spacemouse_device = SpaceMouseTeleop.open_device()
            self.create_timer(self.robot.control_period_s, self._poll_spacemouse)

    def close(self) -> None:
        """Stop reading keys and give the terminal its settings back."""
        self.quit.set()
        if getattr(self, "_reader", None) is not None:
            self._reader.join(timeout=1.0)

    def _on_instruction(self, msg: String) -> None:
        if msg.data:
            self.instruction = msg.data

    def _on_episode(self, msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.START:  # success/failure keys then mark that episode
            self.episode_id = msg.episode_id

    def _read_keys(self) -> None:
        stdin = sys.stdin.fileno()
        saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
        try:
            if saved is not None:
                tty.setcbreak(stdin)
            while not self.quit.is_set() and rclpy.ok():
                ready, _, _ = select.select([stdin], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(stdin, 64).decode(errors="ignore")
                if not data:  # stdin closed
                    break
                for key in data:
                    self._handle(self.keyboard.on_key(key))
        finally:
            if saved is not None:
                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)

    def _poll_spacemouse(self) -> None:
        step, commands = self.spacemouse.on_state(self.spacemouse_device.read())
        self._publish_step(step)
        for command in commands:
            self._handle(command)

    def _handle(self, result) -> None:
        if result is None:
            return
        if isinstance(result, EpisodeCommand):
            self._episode(result)
        else:
            self._publish_step(result)

    def _publish_step(self, step) -> None:
        chunk = array_to_chunk(step.reshape(1, 7), "ee_delta_7d", self.robot.control_period_s,
                               policy_version=self.policy_version, instruction=self.instruction,
                               stamp=self.get_clock().now().to_msg(), frame_id=self.robot.base_frame)
        self.chunk_pub.publish(chunk)

    def _episode(self, command: EpisodeCommand) -> None:
        if command is EpisodeCommand.QUIT:
            self.quit.set()
            return
        if command is EpisodeCommand.START:
            self.episode_id = uuid.uuid4().hex[:12]
            if self.reset_client is not None:
                if not self.reset_client.service_is_ready():
                    self.get_logger().error(f"reset service {self.reset_client.srv_name} is not available")
                    return
                self.reset_client.call_async(Trigger.Request())  # the sim announces START itself
                self.get_logger().info("episode reset requested")
                return
        event = EpisodeEvent(event={EpisodeCommand.START: EpisodeEvent.START,
                                    EpisodeCommand.SUCCESS: EpisodeEvent.SUCCESS,
                                    EpisodeCommand.FAILURE: EpisodeEvent.FAILURE}[command],
                             episode_id=self.episode_id, instruction=self.instruction, robot=self.robot.name,
                             success=command is EpisodeCommand.SUCCESS, message="teleop operator")
        event.header.stamp = self.get_clock().now().to_msg()
        self.episode_pub.publish(event)
        self.get_logger().info(f"episode {command.value}")


def main(argv=None) -> int:
    return run_node(TeleopNode, argv, keep_running=lambda node: not node.quit.is_set(),
                    before_destroy=TeleopNode.close)


if __name__ == "__main__":
    sys.exit(main())
