"""Importing the sim starts no subprocess (pyGLFW's version probes were Python children that a Ctrl-C could
kill mid-start-up with a traceback)."""

import os
import subprocess
import sys
import textwrap

_PROBE = textwrap.dedent("""
    import sys
    spawned = []
    sys.addaudithook(lambda event, args: spawned.append(str(args)[:120]) if event == "subprocess.Popen" else None)
    import prophrl_sim.arm_sim  # noqa: F401 - robosuite, MuJoCo and glfw
    import glfw  # noqa: F401
    print("SPAWNED", len(spawned), spawned)
""")


def test_importing_the_sim_spawns_no_process():
    env = {k: v for k, v in os.environ.items() if k != "PYGLFW_LIBRARY"}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=240)
    line = next((x for x in out.stdout.splitlines() if x.startswith("SPAWNED")), out.stdout + out.stderr[-2000:])
    assert line.startswith("SPAWNED 0 "), line


def test_a_users_glfw_library_is_kept(monkeypatch):
    from prophrl_sim.glfw_library import use_bundled_glfw

    monkeypatch.setenv("PYGLFW_LIBRARY", "/opt/glfw/libglfw.so.3")
    assert use_bundled_glfw() == "/opt/glfw/libglfw.so.3"
    monkeypatch.delenv("PYGLFW_LIBRARY")
    bundled = use_bundled_glfw()
    assert bundled is not None and os.path.isfile(bundled) and os.environ["PYGLFW_LIBRARY"] == bundled
