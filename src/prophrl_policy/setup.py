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
    description="VLA policy (vision + language + flow-matching action head) and its policy node.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "policy_node = prophrl_policy.policy_node:main",
        ],
    },
)
