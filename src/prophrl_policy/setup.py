from setuptools import find_packages, setup

package_name = "prophrl_policy"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="ProphRL",
    maintainer_email="dev@prophrl.org",
    description="VLA policy with a flow-matching action head, policy node, action-chunk executor with safety filter, teleop, recorder.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "executor_node = prophrl_policy.executor_node:main",
            "recorder_node = prophrl_policy.recorder_node:main",
            "policy_node = prophrl_policy.policy_node:main",
            "teleop_node = prophrl_policy.teleop_node:main",
            "collector_node = prophrl_policy.collector_node:main",
            "ee_pose_node = prophrl_policy.ee_pose_node:main",
        ],
    },
)
