import sys

from hearth_bench.cli import main

sys.exit(main())
