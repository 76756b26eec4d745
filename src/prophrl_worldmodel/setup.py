from setuptools import find_packages, setup

package_name = "prophrl_worldmodel"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    # The shipped pretrained Prophets (prophrl_worldmodel.pretrained): safetensors + JSON config + README each.
    package_data={package_name: ["pretrained_models/*.md", "pretrained_models/*/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="ProphRL",
    maintainer_email="dev@prophrl.org",
    description="Prophet action-conditioned video world model, adaptation, reward judge, imagination server.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "imagination_node = prophrl_worldmodel.imagination_node:main",
            "judge_node = prophrl_worldmodel.judge_node:main",
        ],
    },
)
