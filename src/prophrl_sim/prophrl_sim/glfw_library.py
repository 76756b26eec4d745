"""Point pyGLFW at the GLFW library its wheel ships, before robosuite imports it.

Without PYGLFW_LIBRARY, importing `glfw` starts one Python subprocess per candidate library to read its
version. A terminal's Ctrl-C that lands while such a child starts kills it inside interpreter start-up with a
KeyboardInterrupt traceback (seen in `prophrl demo`'s evaluation stage). With the variable set, pyGLFW loads
that file directly. A user's own PYGLFW_LIBRARY is kept.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def use_bundled_glfw() -> str | None:
    """Set PYGLFW_LIBRARY to the glfw wheel's X11 (or, on Wayland, Wayland) library when it is unset and that
    file exists; returns the value in effect."""
    if os.environ.get("PYGLFW_LIBRARY"):
        return os.environ["PYGLFW_LIBRARY"]
    spec = importlib.util.find_spec("glfw")
    if spec is None or not spec.submodule_search_locations:
        return None
    variant = "wayland" if os.environ.get("XDG_SESSION_TYPE") == "wayland" else "x11"
    library = Path(next(iter(spec.submodule_search_locations))) / variant / "libglfw.so"
    if not library.is_file():
        return None
    os.environ["PYGLFW_LIBRARY"] = str(library)
    return str(library)
