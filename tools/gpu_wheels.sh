#!/usr/bin/env bash
# Wheels for the tool library's lent GPU machine, which reaches no registry: its image has Python
# 3.12, torch, transformers, opencv, scipy, pillow, pandas, lxml, werkzeug, jinja2, httpx, pytest
# and pytest-timeout (KINDS.md in the device tool's folder lists them all), but not diffusers,
# flask, gunicorn or label-studio-sdk. This downloads those with every dependency the image lacks
# into .gpu-wheels/ (about 21 MB; the run's carry limit is 64 MB with the tree), for
# benchmarks/gpu_check.sh to install there with --no-deps.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir=.gpu-wheels
rm -rf "$dir" && mkdir -p "$dir"
python3 -m pip download -q -d "$dir" --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
  "diffusers==$(python3 -c 'import diffusers; print(diffusers.__version__)' 2>/dev/null || echo 0.42.1)" \
  flask gunicorn label-studio-sdk
# The image's own packages (KINDS.md, read 2026-11-17): keep its versions, carry none of them.
present="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs build certifi
charset-normalizer click cloudpickle colorama contourpy coverage cycler cython filelock fonttools frozenlist fsspec
h11 h5py hf-xet httpcore httpx huggingface-hub idna imageio iniconfig jinja2 joblib kiwisolver lxml markdown
markdown-it-py markupsafe matplotlib mdurl mpmath msgpack multidict mypy-extensions networkx numpy
opencv-python-headless packaging pandas pathspec pillow pip pluggy protobuf psutil pyarrow pygments pyparsing pytest
pytest-timeout python-dateutil pyyaml regex requests rich safetensors scipy setuptools shellingham six sympy tabulate
tokenizers torch tqdm transformers typer typing-extensions typing-inspect tzdata urllib3 werkzeug wheel wrapt xxhash
yarl zipp"
for wheel in "$dir"/*.whl; do
  name=$(basename "$wheel" | cut -d- -f1 | tr '_A-Z' '-a-z')
  if printf ' %s ' $present | grep -q " $name "; then rm "$wheel"; fi
done
ls "$dir" | wc -l | xargs echo "wheels:"
du -sh "$dir"
