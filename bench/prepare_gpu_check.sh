#!/usr/bin/env bash
# Prepare the folder the GPU check carries (run here, on the CPU machine, in the dev venv):
#     bash bench/prepare_gpu_check.sh [PREP]      (default .gpucheck, git-ignored)
# It holds what the lent GPU cannot get itself (no network there): the PyAV wheel for its
# Python 3.12, a generated 1080p 100-frame face clip with audio, and that clip's faces.npz from
# `fvedit align` (dlib's 100 MB landmark model cannot travel; the edit replays these faces).
set -euo pipefail
prep=${1:-.gpucheck}
mkdir -p "$prep/wheels"
av_version=$(python -c "import av; print(av.__version__)")
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$prep/wheels" "av==$av_version"
python - "$prep/clip.mp4" <<'PY'
import sys
from fvedit.synth import make_face_video
make_face_video(sys.argv[1], frames=100, size=(1920, 1080), fps=25, audio=True, face_scale=0.3)
PY
fvedit align "$prep/clip.mp4" -o "$prep/faces.npz"
du -sh "$prep" "$prep"/* "$prep"/wheels/*
