"""Run the side-by-side benchmark from a checkout: ``python benchmarks/run.py [options]``.

The same as ``xplstm bench [options]``; see ``docs/benchmarks.md`` for results and how to read
them, and ``xplstm bench --help`` for the options.
"""

import sys

from xplstm.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
