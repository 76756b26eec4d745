"""An rclpy ActionClient whose goal futures cannot be lost when goals are sent from a thread other than the
executor's.

The pinned rclpy (9.1.2) registers a sent goal's future twice: once under the client's lock (the fix of
ros2/rclpy#1308), then again without it, under the same sequence number, replacing the first and returning
the second. When an executor thread takes and executes the goal response between the two (the sending thread
preempted after it released the lock, as happens on a loaded machine), the response completes the first
future, which nobody holds, and the returned one never completes: the caller waits for a goal that the
server accepted and executed. ThreadSafeActionClient registers the future once, under the lock.
"""

from __future__ import annotations

from rclpy.action import ActionClient
from rclpy.task import Future


class ThreadSafeActionClient(ActionClient):
    """ActionClient.send_goal_async with one future per goal, registered under the client's lock."""

    def send_goal_async(self, goal, feedback_callback=None, goal_uuid=None) -> Future:
        if not isinstance(goal, self._action_type.Goal):
            raise TypeError(f"Expected goal type ({type(self._action_type.Goal)}) but received ({type(goal)})")
        request = self._action_type.Impl.SendGoalService.Request()
        request.goal_id = self._generate_random_uuid() if goal_uuid is None else goal_uuid
        request.goal = goal
        future = Future()
        if feedback_callback is not None:
            # registered before the goal leaves, so that no early feedback is dropped
            self._feedback_callbacks[bytes(request.goal_id.uuid)] = feedback_callback
        with self._lock:
            sequence_number = self._client_handle.send_goal_request(request)
            if sequence_number in self._pending_goal_requests:
                raise RuntimeError(f"Sequence ({sequence_number}) conflicts with pending goal request")
            self._pending_goal_requests[sequence_number] = future
            self._goal_sequence_number_to_goal_id[sequence_number] = request.goal_id
            future.add_done_callback(self._remove_pending_goal_request)
            self.add_future(future)
        return future
