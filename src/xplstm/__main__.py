"""``python -m xplstm`` is the ``xplstm`` command."""

import sys

from xplstm.cli import main

sys.exit(main())
