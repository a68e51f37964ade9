#!/bin/bash
# usage: exp/queue.sh FILE  -- each line: name epochs seed [extra run.py flags]; runs them one after another on core 1
cd "$(dirname "$0")/.."
while read -r name epochs seed extra; do
  [ -z "$name" ] && continue
  PYTHONPATH=$PWD OMP_NUM_THREADS=1 taskset -c 1 python exp/run.py --name "$name" --epochs "$epochs" --seed "$seed" $extra > "exp/$name.log" 2>&1
done < "$1"
