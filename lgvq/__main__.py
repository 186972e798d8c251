"""``python -m lgvq …`` and ``torchrun --nproc_per_node N -m lgvq train …``: the ``lgvq`` command."""

import sys

from lgvq.cli import main

if __name__ == "__main__":
    sys.exit(main())
