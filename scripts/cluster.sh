#!/usr/bin/env bash
# A real multi-process Spark standalone cluster from pyspark's own jars (the pip package has no
# sbin/start-*.sh): one master and N workers, each worker its own JVM with its own executors and
# Python workers, as on a cluster. Everything binds to 127.0.0.1.
#
#   scripts/cluster.sh up        # prints the master URL (spark://127.0.0.1:7077)
#   scripts/cluster.sh status
#   scripts/cluster.sh down
#
# Settings (environment): SPARKREC_CLUSTER_DIR (pids, logs, worker dirs; default .cluster/),
# SPARKREC_MASTER_PORT (7077), SPARKREC_MASTER_UI_PORT (8080), SPARKREC_WORKERS (2),
# SPARKREC_WORKER_CORES (1), SPARKREC_WORKER_MEMORY (1g), PYTHON (the venv's python).
# Then, e.g.:
#   spark-submit --master "$(scripts/cluster.sh url)" --py-files dist/sparkrec-0.1.0-py3-none-any.whl \
#       jobs/pipeline.py --conf conf/local.yaml train.local_mode=false train.num_workers=2
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="${SPARKREC_CLUSTER_DIR:-$repo/.cluster}"
port="${SPARKREC_MASTER_PORT:-7077}"
ui_port="${SPARKREC_MASTER_UI_PORT:-8080}"
workers="${SPARKREC_WORKERS:-2}"
cores="${SPARKREC_WORKER_CORES:-1}"
memory="${SPARKREC_WORKER_MEMORY:-1g}"
python_bin="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python_bin" ] || python_bin="$(command -v python3)"
url="spark://127.0.0.1:$port"

spark_home() { "$python_bin" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))'; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for FILE PATTERN COUNT SECONDS
  local i
  for ((i = 0; i < $4 * 2; i++)); do
    if [ "$(grep -c -- "$2" "$1" 2>/dev/null || true)" -ge "$3" ]; then return 0; fi
    sleep 0.5
  done
  echo "cluster.sh: timed out waiting for '$2' in $1" >&2
  tail -n 20 "$1" >&2 || true
  return 1
}

up() {
  if alive "$state/master.pid"; then echo "$url"; return 0; fi
  mkdir -p "$state"
  export SPARK_HOME; SPARK_HOME="$(spark_home)"
  export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$python_bin}"
  export SPARK_LOG_DIR="$state" SPARK_WORKER_DIR="$state/work"
  # spark-class execs java, so each pid is the JVM's
  nohup "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master \
    --host 127.0.0.1 --port "$port" --webui-port "$ui_port" >"$state/master.log" 2>&1 &
  echo $! >"$state/master.pid"
  wait_for "$state/master.log" "I have been elected leader" 1 60
  for ((i = 1; i <= workers; i++)); do
    mkdir -p "$state/worker-$i"
    nohup "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker "$url" \
      --host 127.0.0.1 --cores "$cores" --memory "$memory" --webui-port 0 --work-dir "$state/worker-$i" \
      >"$state/worker-$i.log" 2>&1 &
    echo $! >"$state/worker-$i.pid"
  done
  wait_for "$state/master.log" "Registering worker" "$workers" 90
  echo "$url"
}

down() {
  local f pids=()
  for f in "$state"/worker-*.pid "$state"/master.pid; do
    [ -f "$f" ] || continue
    if alive "$f"; then kill "$(cat "$f")" 2>/dev/null || true; pids+=("$(cat "$f")"); fi
    rm -f "$f"
  done
  for p in "${pids[@]}"; do  # wait for the JVMs to exit (then kill -9 after 20 s)
    for ((i = 0; i < 40; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$p" 2>/dev/null || true
  done
}

status() {
  local f
  for f in "$state"/master.pid "$state"/worker-*.pid; do
    [ -f "$f" ] || continue
    if alive "$f"; then echo "$(basename "$f" .pid): running (pid $(cat "$f"))"; else echo "$(basename "$f" .pid): dead"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  url) echo "$url" ;;
  *) echo "usage: scripts/cluster.sh up|down|status|url" >&2; exit 2 ;;
esac
