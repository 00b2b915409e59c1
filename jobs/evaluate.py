"""spark-submit entry point: `spark-submit jobs/evaluate.py --conf conf/local.yaml [key.sub=value ...]`."""

import sys

from sparkrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
