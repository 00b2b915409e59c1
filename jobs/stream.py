"""spark-submit entry point: `spark-submit jobs/stream.py --conf conf/local.yaml [k=v ...]`."""

import sys

from sparkrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["stream", *sys.argv[1:]]))
