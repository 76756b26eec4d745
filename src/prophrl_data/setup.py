from setuptools import find_packages, setup

package_name = "prophrl_data"

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
    description="ROS-free data layer: rosbag2 MCAP bags, bag to episode alignment, training shards and their reader, LeRobot v3 export and import.",
    license="Apache-2.0",
)
