import os
from glob import glob

from setuptools import find_packages, setup

package_name = "prophrl"
# The repo-level launch/ and config/ are this bringup package's share contents.
REPO = os.path.relpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def tree(subdir):
    """data_files entries that install REPO/subdir/** under share/prophrl/subdir/**."""
    entries = {}
    for path in glob(os.path.join(REPO, subdir, "**", "*"), recursive=True):
        if os.path.isfile(path) and "__pycache__" not in path:
            rel_dir = os.path.relpath(os.path.dirname(path), REPO)
            entries.setdefault(os.path.join("share", package_name, rel_dir), []).append(path)
    return sorted(entries.items())


setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        *tree("launch"),
        *tree("config"),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="ProphRL",
    maintainer_email="dev@prophrl.org",
    description="ProphRL bringup: launch files, configs, profiles and the prophrl CLI.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "prophrl = prophrl.cli:main",
        ],
    },
)
