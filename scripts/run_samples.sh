#!/bin/sh
# Run Huawei's official Python samples (pyACL and ACLLite, with and without DVPP) unchanged against the pyACL emulator,
# on small stand-in models converted with atc-sim, and check every execution against onnxruntime
# (scripts/sample_models.py).
#   scripts/run_samples.sh DIR [--work FOLDER] [--only NAME ...]
# DIR is a checkout of Ascend/samples at fc2aea93e48be8f8cee51d0c6c1b13a08155f83a; it is copied, never written.
# OpenCV, which some samples import and the venv lacks, goes into .cache/samples-site (pip --target), not the venv.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
python="$repo/.venv/bin/python"
if [ $# -lt 1 ]; then
    echo "usage: scripts/run_samples.sh DIR [--work FOLDER] [--only NAME ...] (DIR: a checkout of Ascend/samples)" >&2
    exit 2
fi
if [ ! -x "$python" ]; then
    echo "run_samples.sh: error: $python not found: run 'make venv' in $repo first" >&2
    exit 2
fi
commit=fc2aea93e48be8f8cee51d0c6c1b13a08155f83a
head=$(git -C "$1" rev-parse HEAD 2>/dev/null || true)
if [ -n "$head" ] && [ "$head" != "$commit" ]; then
    echo "run_samples.sh: note: $1 is at $head, the checked list is for $commit" >&2
fi
site="$repo/.cache/samples-site"
if ! "$python" -c "import cv2" 2>/dev/null && [ ! -d "$site/cv2" ]; then
    "$python" -m pip install --quiet --no-deps --target "$site" opencv-python-headless==4.14.0.94 ||
        echo "run_samples.sh: note: no OpenCV; the samples that import cv2 are skipped" >&2
fi
ATLAS_KD_SAMPLES_SITE="$site" exec "$python" "$repo/scripts/sample_models.py" "$@"
