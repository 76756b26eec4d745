"""The imagination node's ``~/adapt_world_model`` action (prophrl_msgs/AdaptWorldModel).

Few-shot adaptation of the served checkpoint on rosbag2 episodes with
``prophrl_worldmodel.training.adapt_from_bags`` (``mode`` lora | full, empty: the node's ``adapt_mode``),
into a fresh directory ``adapt-<timestamp>`` under ``adapt_output_dir``; feedback per training step. On
success the adapted model replaces the served one (the node's `swap_model`: between Imagine goals,
sessions closed, live imagination restarted); on failure or cancel the old model keeps serving and the
result says why. One adaptation at a time.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable
from pathlib import Path

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup

from prophrl_common.config_io import ConfigError
from prophrl_msgs.action import AdaptWorldModel
from prophrl_worldmodel.imagine_sessions import Canceled, GoalError, ServedModel

ADAPT_MODES = ("lora", "full")


class AdaptActionServer:
    """`load_model(path)` loads a checkpoint for serving (ConfigError / RuntimeError / OSError when it cannot);
    `swap_model(model, path)` serves it and returns the number of sessions it closed; `is_active()` says
    whether the node serves at all; `counters` is the node's diagnostics counters."""

    def __init__(self, node, served: ServedModel, *, output_dir: str, default_mode: str, batch_size: int,
                 device: str, load_model: Callable, swap_model: Callable[[object, str], int],
                 is_active: Callable[[], bool], restarts_live: bool, counters: dict):
        self.node, self.served = node, served
        self.output_dir, self.default_mode, self.batch_size, self.device = output_dir, default_mode, batch_size, device
        self.load_model, self.swap_model, self.is_active = load_model, swap_model, is_active
        self.restarts_live, self.counters = restarts_live, counters
        self._running = threading.Lock()
        self.action_server = ActionServer(node, AdaptWorldModel, "~/adapt_world_model", self._execute,
                                          goal_callback=lambda _goal: GoalResponse.ACCEPT,
                                          cancel_callback=lambda _goal: CancelResponse.ACCEPT,
                                          callback_group=ReentrantCallbackGroup())

    def _execute(self, goal_handle) -> AdaptWorldModel.Result:
        result = AdaptWorldModel.Result()
        if not self._running.acquire(blocking=False):
            result.success, result.message = False, "an adaptation is already running; one at a time"
            goal_handle.abort()
            return result
        try:
            return self._adapt(goal_handle, goal_handle.request, result)
        finally:
            self._running.release()

    def _adapt(self, goal_handle, goal, result: AdaptWorldModel.Result) -> AdaptWorldModel.Result:
        logger = self.node.get_logger()
        old = self.served.path
        mode = goal.mode or self.default_mode
        try:
            if not self.is_active() or self.served.model is None:
                raise GoalError("the imagination node is not active")
            if not goal.bag_paths:
                raise GoalError("bag_paths is empty: give rosbag2 episode bags (or directories of bags)")
            if goal.steps < 1:
                raise GoalError(f"steps must be >= 1, got {goal.steps}")
            if mode not in ADAPT_MODES:
                raise GoalError(f"mode must be one of {ADAPT_MODES} (or empty: {self.default_mode}), "
                                f"got {goal.mode!r}")
            try:
                from prophrl_worldmodel.training import adapt_from_bags
            except ImportError as exc:
                raise GoalError(f"adaptation is not available: {exc}") from None
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
            out_dir = Path(self.output_dir) / f"adapt-{stamp}"

            def progress(step: int, total_steps: int, loss: float) -> None:
                if goal_handle.is_cancel_requested:
                    raise Canceled(f"at step {step} of {total_steps}")
                goal_handle.publish_feedback(AdaptWorldModel.Feedback(step=int(step), total_steps=int(total_steps),
                                                                      loss=float(loss)))

            logger.info(f"adapting {old} on {len(goal.bag_paths)} bag path(s), {goal.steps} {mode} steps -> {out_dir}")
            adapted = adapt_from_bags(old, list(goal.bag_paths), int(goal.steps), mode, out_dir, progress=progress,
                                      batch_size=self.batch_size, device=self.device, show_progress=False)
            new_path = str(adapted.checkpoint_path)
            try:
                new_model = self.load_model(new_path)
            except (ConfigError, RuntimeError, OSError) as exc:
                raise GoalError(f"the adapted checkpoint {new_path} does not load: {exc}") from None
            metrics = {str(k): float(v) for k, v in dict(adapted.metrics).items()}
            closed = self.swap_model(new_model, new_path)
        except Canceled as exc:
            result.success, result.message = False, f"canceled {exc}; still serving {old}"
            self.counters["adaptations_failed"] += 1
            goal_handle.canceled()
            return result
        except Exception as exc:  # noqa: BLE001 (training errors of any kind: keep serving the old model)
            reason = str(exc) if isinstance(exc, GoalError) else f"adaptation failed: {type(exc).__name__}: {exc}"
            result.success, result.message = False, f"{reason}; still serving {old}"
            self.counters["adaptations_failed"] += 1
            logger.error(result.message)
            goal_handle.abort()
            return result
        self.counters["adaptations"] += 1
        result.success = True
        result.checkpoint_path = new_path
        result.metric_names = list(metrics)
        result.metric_values = [metrics[k] for k in metrics]
        result.message = (f"serving the adapted world model {new_path} (was {old}); closed {closed} open imagination "
                          f"session(s), which ran on the previous model"
                          + ("; live imagination restarted from its start" if self.restarts_live else ""))
        logger.info(result.message)
        goal_handle.succeed()
        return result
