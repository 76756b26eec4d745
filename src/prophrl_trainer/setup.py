from setuptools import find_packages, setup

package_name = "prophrl_trainer"

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
    description="FA-GRPO + FlowScale RL for flow-matching VLA policies, SFT, trainer node, in-process sim collection and rollouts, evaluation.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "trainer_node = prophrl_trainer.trainer_node:main",
        ],
    },
)
