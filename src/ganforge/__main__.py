"""``python -m ganforge <stage>`` (the GPU machine runs it this way, without the console script)."""

import sys

from ganforge.cli import main

sys.exit(main())
