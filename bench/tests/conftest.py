import os
import sys

# The benchmark package lives beside the tests, not installed.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
