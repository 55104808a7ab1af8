"""``python -m hearth run FILE.py WORKFLOW [--INPUT VALUE ...]``."""
import sys

from hearth._runner import main

if __name__ == "__main__":
    sys.exit(main())
