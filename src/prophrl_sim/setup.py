from setuptools import find_packages, setup

package_name = "prophrl_sim"

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
    description="Physics-simulated Franka Panda / UR5e arms (robosuite on MuJoCo) exposing the real drivers' topics.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "sim_node = prophrl_sim.sim_node:main",
            "scripted_expert_node = prophrl_sim.scripted_expert_node:main",
        ],
    },
)
