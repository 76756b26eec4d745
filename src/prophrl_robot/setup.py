from setuptools import find_packages, setup

package_name = "prophrl_robot"

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
    description="Robot runtime: action-chunk executor with safety filter and IK backends, end-effector pose, recorder, teleop and collector nodes.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "executor_node = prophrl_robot.executor_node:main",
            "recorder_node = prophrl_robot.recorder_node:main",
            "teleop_node = prophrl_robot.teleop_node:main",
            "collector_node = prophrl_robot.collector_node:main",
            "ee_pose_node = prophrl_robot.ee_pose_node:main",
        ],
    },
)
