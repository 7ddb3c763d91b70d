#!/usr/bin/env python
"""The `make demo` job: train DBA on easy-VQA offline, evaluate on its test split, answer one question."""

import sys

from vqa.demo import main

if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
