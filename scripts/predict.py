#!/usr/bin/env python
"""Answer questions: scripts/predict.py --checkpoint RUN/best --image IMG --question TEXT [--top-k 5] [--json]"""

import sys

from vqa.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
