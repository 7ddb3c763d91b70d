#!/usr/bin/env python
"""Score a saved model: scripts/evaluate.py --checkpoint RUN/best --split test [--results PATH]"""

import sys

from vqa.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
