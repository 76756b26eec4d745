"""The packages depend on each other by role: each package imports only the packages its role allows
(scripts/package_graph.py reads every import statement of every module under src/, tests left out)."""

import importlib.util
import sys

from prophrl_common.paths import repo_root

ROOT = repo_root()

# prophrl_msgs (the contracts) may be imported everywhere.
ALLOWED = {
    "prophrl_common": set(),
    "prophrl_data": {"prophrl_common"},
    "prophrl_nn": {"prophrl_common"},
    "prophrl_sim": {"prophrl_common", "prophrl_data"},
    "prophrl_robot": {"prophrl_common", "prophrl_data"},
    "prophrl_policy": {"prophrl_common", "prophrl_nn"},
    "prophrl_worldmodel": {"prophrl_common", "prophrl_nn", "prophrl_data"},
    "prophrl_trainer": {"prophrl_common", "prophrl_data", "prophrl_nn", "prophrl_sim", "prophrl_robot",
                        "prophrl_policy", "prophrl_worldmodel"},
    "prophrl": {"prophrl_common", "prophrl_data", "prophrl_nn", "prophrl_sim", "prophrl_robot", "prophrl_policy",
                "prophrl_worldmodel", "prophrl_trainer"},
}


def _package_graph():
    spec = importlib.util.spec_from_file_location("package_graph", ROOT / "scripts" / "package_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module while the class is created
    spec.loader.exec_module(module)
    return module


def test_every_package_imports_only_what_its_role_allows():
    graph = _package_graph()
    packages = {path.name for path in (ROOT / "src").iterdir() if (path / "package.xml").is_file()}
    assert packages - {"prophrl_msgs"} == set(ALLOWED), "a package without a role here: give it one in ALLOWED"
    offending = [found for found in graph.cross_package_imports(ROOT / "src")
                 if found.imported_package not in ALLOWED[found.package] | {"prophrl_msgs"}]
    assert not offending, "imports across roles:\n" + "\n".join(
        f"  {found.module.relative_to(ROOT)}:{found.line}: {found.package} imports {found.imported}"
        for found in offending)


def test_the_graph_sees_imports_inside_functions(tmp_path):
    """The check reads deferred imports too (e.g. a node importing torch code in a callback)."""
    graph = _package_graph()
    module = tmp_path / "prophrl_robot" / "prophrl_robot" / "node.py"
    module.parent.mkdir(parents=True)
    module.write_text("def main():\n    from prophrl_sim.arm_sim import ArmSim\n    return ArmSim\n")
    (tmp_path / "prophrl_robot" / "test").mkdir()
    (tmp_path / "prophrl_robot" / "test" / "test_node.py").write_text("import prophrl_policy\n")
    found = graph.cross_package_imports(tmp_path)
    assert [(f.package, f.line, f.imported) for f in found] == [("prophrl_robot", 2, "prophrl_sim.arm_sim")]
    assert graph.package_imports(tmp_path) == {"prophrl_robot": {"prophrl_sim"}}
