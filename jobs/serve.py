"""spark-submit entry point: `spark-submit jobs/serve.py --conf conf/local.yaml [--host H] [--port P] [k=v ...]`."""

import sys

from sparkrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
