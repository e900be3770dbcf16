#!/usr/bin/env bash
# Issue 11, before any device time is spent: put what the GPU machine needs and lacks into .gpu/ (ignored,
# named in `carry`), check that the call fits the 64 MiB that travels, and print the device calls to make.
#
#     scripts/prepare_gpu_session.sh        # in the checkout the session was started in: that one travels
#
# .gpu/data: the JPEG copy as its 19.8 MB archive (decoded it is 184 MB, and airbench's files 185 MB: both
#            are made on the GPU machine, in seconds on its 16 cores).
# .gpu/whl:  airbench 0.1.8 (PyPI has only its sdist: the wheel is built here; pure Python), and for the
#            Train page's GPU test, streamlit and the packages of it the GPU image lacks (/work/.library/
#            device/KINDS.md lists the image's), at our pinned versions, for its Python 3.12.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-.venv/bin/python}
ARCHIVE=${CIFAR10_JPEG:-/work/shared/cifar10/cifar10-jpg.tar.gz}
EXCLUDE="$(git rev-parse --git-common-dir)/info/exclude"
grep -qxF "/.gpu/" "$EXCLUDE" 2>/dev/null || echo "/.gpu/" >> "$EXCLUDE"
mkdir -p .gpu/data .gpu/whl

if [ -f "$(dirname "$ARCHIVE")/SHA256SUMS" ]; then (cd "$(dirname "$ARCHIVE")" && sha256sum -c --quiet SHA256SUMS); fi
cp -u "$ARCHIVE" .gpu/data/cifar10-jpg.tar.gz

[ -f .gpu/whl/airbench-0.1.8-py3-none-any.whl ] || $PY -m pip wheel -q --no-deps -w .gpu/whl airbench==0.1.8
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl streamlit==1.67.0 altair==6.3.0 pydeck==0.9.3 starlette==1.10.0 uvicorn==0.54.0 \
    websockets==17.4 watchdog==7.1.0 itsdangerous==2.2.0 python-multipart==0.0.34 jsonschema==4.26.0 \
    jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1

# what travels: tracked and untracked-not-ignored files, plus .gpu
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s}')
carry_bytes=$(du -sb .gpu | cut -f1)
total_mib=$(( (tree_bytes + carry_bytes) / 1048576 ))
echo "travels: working tree $((tree_bytes / 1048576)) MiB + .gpu $((carry_bytes / 1048576)) MiB = $total_mib MiB (limit 64)"
[ "$total_mib" -lt 64 ] || { echo "error: over the 64 MiB a call may carry" >&2; exit 1; }

cat <<'CALLS'

Device calls for issue 22, in this order, each with carry [".gpu"]: two calls fit the 15 device minutes
(start-up and idle waits included). Make each call as soon as the one before returns, and give the
machine back after the last.

1. Works + speed (steps 1-2), timeout_s 300:
. scripts/gpu_env.sh && { python3 -m pytest tests/engine/test_gpu.py -m gpu -n 4 -p no:cacheprovider 2>&1 | tee $OUT/pytest_gpu.log; python3 -m bench.gpu_speed $OUT --seconds 5; }

2. Accuracy at equal time (step 3), timeout_s 420:
. scripts/gpu_env.sh && python3 -m bench.equal_time $OUT --minutes 3 --export best

3. Only with device time left (else the next session lent a GPU): speed run against airbench94, timeout_s 360:
. scripts/gpu_env.sh && python3 -m bench.airbench_compare $OUT --seeds 5 --ladder 10,20,40 --set ema_decay=0
CALLS
