"""The ROS side of tests/test_imagination_node.py's `prophrl up imagination` test, in a process of its own.

The test starts `prophrl up imagination` and this script; this script watches and drives the live loop over
DDS (its own rclpy context and node, on the ROS domain it inherits from the test) and writes what it saw and
checked to a JSON result file, rewritten after every step:

    {"listening": true, "running": "<step>" | null, "steps": {"<step>": {...what it saw...}},
     "failed": null | {"step": ..., "error": ...}, "done": true | false}

`done` (all steps passed) or `failed` (a step's check failed) is the verdict. A result with neither means the
process was killed or exited mid-step: the stall watchdog (a bounded rclpy wait that never returned,
see prophrl_common.testing.StallWatchdog) or the test's timeout. The test retries such a run once, and the
test process itself never waits on DDS.

Run by hand (with `prophrl up imagination ... start_dataset:=DATASET` running on the same ROS domain):
    python tests/imagination_live_observer.py --dataset DATASET --action-horizon 4 --actions-per-frame 2 \
        --result /tmp/observer.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))   # the test module's helpers

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from rclpy.node import Node  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from prophrl_common.testing import StallWatchdog, spin_until  # noqa: E402
from prophrl_msgs.action import Imagine  # noqa: E402
from prophrl_msgs.msg import EpisodeEvent  # noqa: E402
from test_imagination_node import (PROFILE_IMAGINE, LiveObserver, _set_parameter, _stamp_ns,  # noqa: E402
                                   load_dataset_start)

STALLED = 86   # exit status after the stall watchdog fired


class Result:
    def __init__(self, path: Path):
        self.path = path
        self.data = {"listening": False, "running": None, "steps": {}, "failed": None, "done": False}

    def write(self, **updates):
        self.data.update(updates)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


class Scenario:
    def __init__(self, args, node: Node, watchdog: StallWatchdog):
        self.node, self.watchdog = node, watchdog
        self.horizon, self.actions_per_frame = args.action_horizon, args.actions_per_frame
        self.starts = [load_dataset_start(args.dataset, i) for i in range(2)]
        self.seen = LiveObserver(node, "/imagination/executed_chunk")

    def wait(self, predicate, timeout, what):
        """spin_until under the stall watchdog (which also wants a beat from every spin: a spin_once(0.01)
        that does not return for --stall-grace seconds is the stall); a timeout fails the step with `what`."""
        def beating():
            self.watchdog.beat()
            return predicate()

        with self.watchdog.bounded(timeout, what, idle_s=self.watchdog.grace_s):
            ok = spin_until(self.node, beating, timeout)
        assert ok, f"{what}: not within {timeout} s"

    def closed_loop(self, after_ns=0):
        with self.watchdog.bounded(5.0, "check_closed_loop"):
            self.seen.check_closed_loop(self.node, self.starts[0].start.ee_pose[:3], self.horizon,
                                        self.actions_per_frame, after_ns=after_ns)

    def set_parameter(self, name, value):
        with self.watchdog.bounded(40.0, f"set {name}:={value}"):
            return _set_parameter(self.node, "/imagination", name, value)

    # ------------------------------------------------------------------ steps, in order
    def step_nodes(self):
        self.wait(lambda: {"imagination", "policy_node"} <= set(self.node.get_node_names()), 90,
                  "the imagination and policy_node nodes")
        return {"node_names": sorted(self.node.get_node_names())}

    def step_chunks(self):
        seen = self.seen
        self.wait(lambda: len(seen.checkable_executed()) >= 4, 90, "4 executed chunks after the first pose seen")
        return {"executed": len(seen.executed), "instructions": list(seen.instructions),
                "image_formats": sorted({(m.width, m.height, m.encoding) for m in seen.images})}

    def step_closed_loop(self):
        self.closed_loop()
        return {"executed": len(self.seen.executed)}

    def step_reset(self):
        """~/reset: a new episode (STOP, then START) from the same start, and the loop goes on."""
        seen = self.seen
        reset = self.node.create_client(Trigger, "/imagination/reset")
        self.wait(reset.service_is_ready, 20, "the ~/reset service")
        starts_before = sum(e.event == EpisodeEvent.START for e in seen.events)
        future = reset.call_async(Trigger.Request())
        self.wait(future.done, 20, "the ~/reset response")
        response = future.result()
        assert response.success, response.message
        self.wait(lambda: sum(e.event == EpisodeEvent.START for e in seen.events) > starts_before, 20,
                  "a new START event")
        last_two = [e.event for e in seen.events[-2:]]
        assert last_two == [EpisodeEvent.STOP, EpisodeEvent.START], last_two
        assert seen.events[-1].instruction == self.starts[0].start.instruction, seen.events[-1].instruction
        restarted = _stamp_ns(seen.events[-1].header.stamp)
        executed_before = len(seen.executed)
        self.wait(lambda: len(seen.checkable_executed(restarted)) >= 3, 60, "3 executed chunks after the reset")
        self.closed_loop(after_ns=restarted)
        return {"success": response.success, "last_two_events": last_two,
                "instruction": seen.events[-1].instruction, "executed_before": executed_before,
                "executed_after": len(seen.executed)}

    def step_start_episode(self):
        """start_episode at run time: out of range is refused, a valid one restarts from that episode."""
        seen, start = self.seen, self.starts[1]
        refused = self.set_parameter("start_episode", 5)
        assert not refused.successful and "out of range" in refused.reason, refused
        accepted = self.set_parameter("start_episode", 1)
        assert accepted.successful, accepted.reason
        self.wait(lambda: seen.events[-1].event == EpisodeEvent.START
                  and start.episode_id in seen.events[-1].episode_id, 20,
                  f"a START of episode {start.episode_id} (episodes so far: {[e.episode_id for e in seen.events]})")
        self.wait(lambda: seen.instructions[-1] == start.start.instruction, 10, "episode 1's instruction")
        self.wait(lambda: any(np.allclose([p.pose.position.x, p.pose.position.y, p.pose.position.z],
                                          start.start.ee_pose[:3], atol=1e-5) for p in seen.poses[-20:]), 10,
                  "episode 1's start pose")
        return {"refused": {"successful": refused.successful, "reason": refused.reason},
                "accepted": {"successful": accepted.successful, "reason": accepted.reason},
                "episode_id": seen.events[-1].episode_id, "instruction": seen.instructions[-1]}

    def step_imagine_action(self):
        client = ActionClient(self.node, Imagine, PROFILE_IMAGINE)
        try:
            self.wait(client.server_is_ready, 20, f"the Imagine action server {PROFILE_IMAGINE}")
        finally:
            client.destroy()
        return {"server_ready": True}

    STEPS = ("nodes", "chunks", "closed_loop", "reset", "start_episode", "imagine_action")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--action-horizon", type=int, required=True)
    parser.add_argument("--actions-per-frame", type=int, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--stall-grace", type=float, default=15.0)
    args = parser.parse_args(argv)

    result = Result(args.result)
    result.write()
    watchdog = StallWatchdog(args.stall_grace, STALLED, on_stall=lambda what: result.write(stalled=what))
    rclpy.init()
    node = Node("imagination_live_observer")
    scenario = Scenario(args, node, watchdog)
    result.write(listening=True)
    print(f"listening on ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID')}", flush=True)
    for name in Scenario.STEPS:
        result.write(running=name)
        started = time.monotonic()
        try:
            seen = getattr(scenario, f"step_{name}")()
        except Exception as exc:   # the verdict: this step's check failed
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            print(f"step {name} FAILED after {time.monotonic() - started:.1f} s\n{error}", flush=True)
            result.write(running=None, failed={"step": name, "error": error})
            break
        seen["elapsed_s"] = round(time.monotonic() - started, 2)
        print(f"step {name} passed in {seen['elapsed_s']} s", flush=True)
        result.data["steps"][name] = seen
        result.write(running=None)
    else:
        result.write(done=True)
    # Tear down under the watchdog too; the verdict is already written.
    with watchdog.bounded(10.0, "rclpy shutdown"):
        node.destroy_node()
        rclpy.shutdown()
    return 1 if result.data["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
