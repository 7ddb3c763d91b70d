#!/usr/bin/env python
"""Train a VQA model: scripts/train.py --config models/easy_vqa_dba.yaml [--resume RUN] [key=value ...]"""

import sys

from vqa.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
