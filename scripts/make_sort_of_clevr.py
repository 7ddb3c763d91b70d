#!/usr/bin/env python
"""Generate Sort-of-CLEVR in the CLEVR layout: scripts/make_sort_of_clevr.py OUT_DIR [--image-size 75] ..."""

import argparse
import sys

from vqa.data.sort_of_clevr import generate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="output folder; read it back with read_dataset('sort_of_clevr', OUT_DIR, split)")
    parser.add_argument("--image-size", type=int, default=75, help="image side in pixels (default 75)")
    parser.add_argument(
        "--object-size", type=float, default=10 / 75,
        help="object side or diameter as a fraction of the image side (default 10/75)",
    )
    parser.add_argument("--train", type=int, default=9000, help="number of train images (default 9000)")
    parser.add_argument("--val", type=int, default=500, help="number of val images (default 500)")
    parser.add_argument("--test", type=int, default=500, help="number of test images (default 500)")
    parser.add_argument("--questions-per-image", type=int, default=12, help="questions per image, 1 to 36 (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)

    written = generate(
        args.out_dir,
        image_size=args.image_size,
        object_size=args.object_size,
        num_images={"train": args.train, "val": args.val, "test": args.test},
        questions_per_image=args.questions_per_image,
        seed=args.seed,
    )
    for split, count in written.items():
        print(f"{split}: {count} questions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
