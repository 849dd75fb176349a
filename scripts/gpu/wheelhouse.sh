#!/usr/bin/env bash
# The offline wheelhouse for the GPU machine (issue 29): the wheels with which mmengine's Runner
# imports and trains there (CPython 3.12, manylinux x86_64, torch 2.11.0+cu130 installed, no
# network), into a git-ignored folder that the device tool carries (64 MiB per call, the tree
# included). scripts/gpu_check.sh's part e2e installs from it with
#   pip install --no-index --find-links .whl/e2e -r .whl/e2e/requirements.txt
#
# What goes in, and why (sizes measured 2026-12-06 for cp312; all of it: 33.9 MB):
# - mmengine-lite 0.10.7 (0.45 MB) and its whole closure: addict, numpy, pyyaml, rich
#   (markdown-it-py, mdurl, pygments), termcolor, yapf (platformdirs), and packaging, which mmengine
#   imports without requiring it: 19 MB, 15.7 of them numpy.
#   mmengine-lite is mmengine 0.10.7's code, file for file, without opencv and matplotlib among
#   its requirements. Full mmengine requires opencv-python (79 MB alone) and matplotlib with its
#   dependencies (26 MB): 125 MB with the rest, over the carry limit.
# - The Runner still imports cv2 (mmengine/visualization/visualizer.py, at import time) and its
#   default Visualizer matplotlib (when the Runner is built). The GPU image has both
#   (opencv-python-headless and matplotlib: the device tool's KINDS.md, 2026-11-17), so neither is
#   carried; opencv-python-headless's wheel is 64 MB (--opencv adds it, for a machine without it:
#   the rest must then be left out).
# - torchvision 0.26.0+cu130 (7.5 MB; it requires torch==2.11.0 exactly, the GPU machine's) and
#   pillow (7.1 MB, its requirement), for r3d_18 itself; only for --python-version 3.12.
# Packages the machine already has (numpy, pyyaml, rich, pillow, torchvision per KINDS.md) are not
# reinstalled: pip takes the installed ones; the wheels are there for a machine that lacks them.
#
# usage: scripts/gpu/wheelhouse.sh [--dest DIR] [--python-version 3.12] [--no-torchvision] [--opencv]
#   --dest  default .whl/e2e (git-ignored). Ends by printing the folder's size against the limit.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=.whl/e2e
PYV=3.12
TORCHVISION=1
OPENCV=0
LIMIT_MIB=60      # of the device tool's 64 MiB per call: the tree itself is ~2.3 MB
while [ $# -gt 0 ]; do
  case "$1" in
    --dest) DEST=$2; shift ;;
    --python-version) PYV=$2; shift ;;
    --no-torchvision) TORCHVISION=0 ;;
    --opencv) OPENCV=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "wheelhouse: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python3}
rm -rf "$DEST"
mkdir -p "$DEST"
# pip matches a manylinux tag exactly: the tags a CPython 3.12 x86_64 with glibc >= 2.28 takes
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do
  plat+=(--platform "$p")
done
download=("$PY" -m pip download -q --disable-pip-version-check --only-binary=:all:
          --python-version "$PYV" --implementation cp "${plat[@]}" -d "$DEST")
# packaging: mmengine imports it (mmengine/utils/version_utils.py) without requiring it; full
# mmengine gets it through matplotlib
reqs=(mmengine-lite==0.10.7 packaging)
"${download[@]}" "${reqs[@]}"
if [ "$TORCHVISION" = 1 ] && [ "$PYV" = 3.12 ]; then
  # --no-deps: its torch==2.11.0 is the machine's own (a 900 MB wheel otherwise)
  "${download[@]}" --no-deps torchvision==0.26.0 pillow
  echo "torchvision==0.26.0" >"$DEST/optional.txt"
fi
if [ "$OPENCV" = 1 ]; then
  "${download[@]}" --no-deps opencv-python-headless
  reqs+=(opencv-python-headless)
fi
printf '%s\n' "${reqs[@]}" >"$DEST/requirements.txt"
bytes=$(du -cb "$DEST"/*.whl | tail -n 1 | cut -f 1)
mib=$(( (bytes + 1048575) / 1048576 ))
ls -1 "$DEST"/*.whl | sed 's#.*/#  #'
echo "wheelhouse: $DEST, $(ls "$DEST"/*.whl | wc -l) wheels, $mib MiB (limit ${LIMIT_MIB} MiB of the carry's 64)"
if [ "$mib" -gt "$LIMIT_MIB" ]; then
  echo "wheelhouse: over the limit: drop --opencv or torchvision" >&2
  exit 1
fi
