#!/usr/bin/env bash
# One idempotent setup for a fresh machine (Python 3.11 + pip + gcc + cmake):
#   .venv with pinned deps (ROS 2 Kilted wheels, torch CPU, robosuite/MuJoCo, ...),
#   prophrl_msgs generated and installed into the venv prefix, our packages installed editable,
#   and ./prophrl.env to source. A second run with nothing changed takes seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
log() { printf '[setup] %s\n' "$*"; }
# pip warns about this machine's optional local indexes on every package; keep the log readable.
pip_quiet() { "$VPY" -m pip "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }; }
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
stamp_ok() { [ -f "$VENV/.stamp-$1" ] && [ "$(cat "$VENV/.stamp-$1")" = "$2" ]; }
stamp_set() { echo "$2" > "$VENV/.stamp-$1"; }

"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "ProphRL needs Python 3.11 (the ROS 2 Kilted wheels are cp311)." >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# 1. Pinned dependencies.
deps_hash=$(hash_of requirements-ros.txt requirements.txt requirements-nodeps.txt)
if ! stamp_ok deps "$deps_hash"; then
  log "installing pinned dependencies (cold: a few minutes)"
  pip_quiet install --quiet --disable-pip-version-check -r requirements-ros.txt -r requirements.txt
  pip_quiet install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
  stamp_set deps "$deps_hash"
  rm -f "$VENV/.stamp-cmakefix" "$VENV/.stamp-msgs"
fi

# 2. The ROS wheels bake their build machine's Python include dirs into exported cmake files.
if ! stamp_ok cmakefix "$deps_hash"; then
  pyinc=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  npinc=$("$VPY" -c 'import numpy; print(numpy.get_include())')
  { grep -rl --include='*.cmake' '/opt/python/cp311-cp311' "$VENV/share" 2>/dev/null || true; } | while read -r f; do
    sed -i "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$npinc#g; s#/opt/python/cp311-cp311/include/python3.11#$pyinc#g" "$f"
  done
  stamp_set cmakefix "$deps_hash"
fi

# 3. prophrl_msgs: generated with cmake into the venv prefix (no colcon/ROS install needed here).
#    Built in the venv's own build directory: build/ at the repo root is colcon's (`colcon build` there
#    would otherwise reuse this CMake cache, whose install prefix is the venv, and leave
#    install/prophrl_msgs empty). A build/prophrl_msgs that an earlier setup.sh made (its cache
#    installs into this venv) is removed for that reason.
MSGS_BUILD="$VENV/build/prophrl_msgs"
MSGS_LOG="$VENV/build/msgs.log"
if grep -qsxF "CMAKE_INSTALL_PREFIX:PATH=$VENV" build/prophrl_msgs/CMakeCache.txt; then
  log "removing build/prophrl_msgs of an earlier setup (colcon's build directory)"
  rm -rf build/prophrl_msgs build/msgs.log
  rmdir build 2>/dev/null || true
fi
msgs_hash=$(cd src/prophrl_msgs && find . -type f | sort | xargs cat | sha256sum | cut -d' ' -f1)
if ! stamp_ok msgs "$msgs_hash" || ! "$VPY" -c 'import prophrl_msgs.msg' 2>/dev/null; then
  log "building prophrl_msgs"
  rm -rf "$MSGS_BUILD" && mkdir -p "$VENV/build"
  (
    export AMENT_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
    cmake -S src/prophrl_msgs -B "$MSGS_BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" \
      -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VPY" -DCMAKE_BUILD_TYPE=Release >"$MSGS_LOG" 2>&1 \
      && cmake --build "$MSGS_BUILD" -j"$(nproc)" >>"$MSGS_LOG" 2>&1 \
      && cmake --install "$MSGS_BUILD" >>"$MSGS_LOG" 2>&1
  ) || { echo "prophrl_msgs build failed; see $MSGS_LOG" >&2; tail -30 "$MSGS_LOG" >&2; exit 1; }
  stamp_set msgs "$msgs_hash"
fi

# 4. Our Python packages, editable (ament_python packages that are also pip-installable).
pkgs=(src/prophrl_common src/prophrl_data src/prophrl_nn src/prophrl_sim src/prophrl_robot src/prophrl_policy src/prophrl_worldmodel src/prophrl_trainer src/prophrl)
pkg_hash=$(for p in "${pkgs[@]}"; do cat "$p/setup.py" "$p/package.xml"; done | sha256sum | cut -d' ' -f1)
if ! stamp_ok pkgs "$pkg_hash"; then
  log "installing ProphRL packages (editable)"
  # Uninstall the previous install first: a console script that moved between packages would otherwise be
  # installed by its new package and then deleted when pip uninstalls its old one.
  installed=$("$VPY" -m pip list --disable-pip-version-check --format=freeze 2>/dev/null \
              | sed -n 's/^\(prophrl[a-z_-]*\)==.*/\1/p' | grep -v '^prophrl[-_]msgs$' || true)
  if [ -n "$installed" ]; then
    pip_quiet uninstall --quiet --yes --disable-pip-version-check $installed
  fi
  args=()
  for p in "${pkgs[@]}"; do args+=(-e "$p"); done
  pip_quiet install --quiet --disable-pip-version-check --no-deps --no-build-isolation --use-pep517 "${args[@]}"
  stamp_set pkgs "$pkg_hash"
fi

# 5. One env file to source.
cat > "$ROOT/prophrl.env" <<ENV
# Generated by scripts/setup.sh. Source it: . ./prophrl.env
. "$VENV/bin/activate"
export AMENT_PREFIX_PATH="$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
export RMW_IMPLEMENTATION=\${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
export MUJOCO_GL=\${MUJOCO_GL:-egl}
export PYOPENGL_PLATFORM=\${PYOPENGL_PLATFORM:-\$MUJOCO_GL}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PROPHRL_ROOT="$ROOT"
ENV
log "ready: . ./prophrl.env"
