"""`python -m kata_py.shimv2`: the containerd shim v2 (main.py)."""

import sys

from kata_py.shimv2.main import main

sys.exit(main())
