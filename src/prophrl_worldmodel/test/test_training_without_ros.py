"""Training runs on a GPU box that has torch but no ROS: pretraining Prophet, the judge and RL in imagination
import neither ROS messages, rclpy nor the rosbag2 readers (only bags2dataset and the nodes need those)."""

import json
import subprocess
import sys

ROS_MODULES = ("rclpy", "sensor_msgs", "geometry_msgs", "prophrl_msgs", "rosbags", "mcap", "mcap_ros2")
TRAINING_MODULES = ("prophrl_worldmodel.cli", "prophrl_worldmodel.training", "prophrl_worldmodel.judge_cli",
                    "prophrl_trainer.train_cli", "prophrl_trainer.rl_smoke", "prophrl_policy.modeling_vla",
                    "prophrl_data.shards")


def test_the_training_paths_import_no_ros_module():
    code = (f"import json, sys\nfor name in {TRAINING_MODULES!r}:\n    __import__(name)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {ROS_MODULES!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"training imports ROS / bag modules: {loaded}"
