#!/usr/bin/env bash
# The lent GPU machine's stack in a venv, and the test suite under it:
# torch 2.11.0, triton 3.6.0, transformers 5.17.0, numpy 2.5.2 (Python 3.12), plus the rest
# of lgvq's test extra within those pins.
#
#   tests/image_stack.sh [VENV] [pytest arguments...]      # from anywhere; PYTHON=python3.12 by default
#
# torch 2.11.0 from PyPI is the CUDA build (several GB), so this runs outside CI. On a machine
# without a GPU the gpu-marked tests skip, and so do the interpreter tests: triton 3.6's
# interpreter fails with numpy >= 2.4 (tests/conftest.py says why); on the GPU they all run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-${TMPDIR:-/tmp}/lgvq-image-stack}
shift || true
pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
printf '%s\n' torch==2.11.0 triton==3.6.0 transformers==5.17.0 numpy==2.5.2 > "$pins"
[ -x "$venv/bin/python" ] || "${PYTHON:-python3.12}" -m venv "$venv"
"$venv/bin/pip" install -q -r "$pins"
"$venv/bin/pip" install -q -c "$pins" -e "$root[test]"
"$venv/bin/python" -c 'import numpy, torch, transformers, triton; print("stack:", "torch", torch.__version__,
"triton", triton.__version__, "transformers", transformers.__version__, "numpy", numpy.__version__)'
cd "$root"
"$venv/bin/python" -m pytest -q -n 2 -p no:cacheprovider "$@"
