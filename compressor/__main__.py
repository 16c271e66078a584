"""`python -m compressor`: the `compress` command, as `torchrun --nproc_per_node N -m compressor ...` starts it."""

import sys

from compressor.cli import main

sys.exit(main())
