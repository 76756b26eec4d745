from setuptools import find_packages, setup

package_name = "prophrl_nn"

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
    description="Small torch pieces shared by the policy and the world model: the hashed bag-of-words text encoder, flow-matching samplers.",
    license="Apache-2.0",
)
