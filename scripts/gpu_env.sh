# Sourced first by each device call of issue 22 (scripts/prepare_gpu_session.sh prints them): installs the
# carried wheels, points the code at the carried JPEG copy, and says what the machine is.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/whl/*.whl || return 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 CIFAR10_DATA="$PWD/.gpu/data/cifar10-jpg.tar.gz"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.used,memory.total --format=csv
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
