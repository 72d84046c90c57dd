#!/usr/bin/env bash
# Launch the 2-process FSDP2 toy run of tests/test_dist.py N times and count the runs that do not exit 0.
# Why: the end of a gloo run once aborted 2-3% of the time (st_r1/dist.shutdown; RESULTS: dist teardown).
# A failing run's folder (log, and a core dump where `ulimit -c` allows) is kept under $KEEP for gdb.
#   bash bench/dist_teardown.sh [N=150]
N=${1:-150}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEEP=${KEEP:-/tmp/dist_teardown}
mkdir -p "$KEEP"
ulimit -c unlimited 2>/dev/null
fail=0
for i in $(seq 1 "$N"); do
  d=$(mktemp -d)
  (cd "$d" && PYTHONFAULTHANDLER=1 OMP_NUM_THREADS=1 timeout 120 python -m torch.distributed.run \
     --nproc_per_node=2 --master_port=$((29500 + RANDOM % 2000)) "$ROOT/tests/dist_worker.py" --mode fsdp \
     --steps 4 --accum 2 --save-every 2 --out "$d/out" --run-dir "$d/run" > "$d/log" 2>&1)
  rc=$?
  if [ $rc -ne 0 ]; then fail=$((fail + 1)); echo "run $i: exit $rc, kept in $KEEP/run$i"; mv "$d" "$KEEP/run$i"
  else rm -rf "$d"; fi
done
echo "$fail of $N runs failed"
