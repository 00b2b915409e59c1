"""spark-submit entry point: `spark-submit jobs/replay.py --conf conf/local.yaml --rate 100 [k=v ...]`."""

import sys

from sparkrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["replay", *sys.argv[1:]]))
