import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")
