"""spark-submit entry point: `spark-submit jobs/recommend.py --conf conf/local.yaml [--users ids.txt] [k=v ...]`."""

import sys

from sparkrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["recommend", *sys.argv[1:]]))
