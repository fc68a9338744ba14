#!/usr/bin/env bash
# The GPU check, for a machine with one CUDA GPU: the gpu-marked tests, then the GPU table
# (benchmarks/gpu_check.py) and the fp16 speed benchmarks, in about 5 minutes on an H100.
#
# On a GPU machine that can install packages:  bash benchmarks/gpu_check.sh
# On the tool library's lent GPU (no registry there): first, here, `bash tools/gpu_wheels.sh`, which
# downloads the wheels that machine lacks into .gpu-wheels/ (about 21 MB, git-ignored); then
#   run(command="bash benchmarks/gpu_check.sh", carry=[".gpu-wheels"], timeout_s=480)
# Results go to $OUT (the lent machine's folder that comes back), else /tmp/seediff-gpu-check.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-/tmp/seediff-gpu-check}"
mkdir -p "$out"
python="${PYTHON:-python3}"
if [ -d .gpu-wheels ] && ! "$python" -c "import diffusers, flask, label_studio_sdk" 2>/dev/null; then
  # Only the wheels the machine lacks are in the folder, so install them all, resolving nothing.
  "$python" -m pip install -q --no-index --no-deps .gpu-wheels/*.whl 2>&1 | tail -3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 2
status=0
step() {  # step NAME SECONDS COMMAND...: each bounded, so one slow step cannot eat the others' time
  local name=$1 seconds=$2; shift 2
  echo "== $name"
  local start=$SECONDS
  timeout "$seconds" "$@" >"$out/$name.txt" 2>&1
  local rc=$?
  tail -25 "$out/$name.txt"
  echo "== $name: exit $rc in $((SECONDS - start)) s"
  [ $rc -eq 0 ] || status=1
}
step gpu_tests 150 "$python" -m pytest -q -p no:cacheprovider -o addopts="" -m gpu --timeout 140 tests/test_gpu.py
step gpu_table 150 "$python" benchmarks/gpu_check.py --out "$out"
step core_speed 90 "$python" benchmarks/core_speed.py --device cuda --dtype float16
step prelabel_speed 60 "$python" benchmarks/prelabel_speed.py --device cuda
exit $status
