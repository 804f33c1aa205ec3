"""The test suite."""

import os

# Triton's kernels run in its interpreter on CPUs, whichever test imports them first (Triton reads this once, when
# the kernels are first imported).
os.environ.setdefault("TRITON_INTERPRET", "1")
