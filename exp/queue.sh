#!/bin/bash
# usage: exp/queue.sh FILE  -- each line: name epochs seed opts-json [lr] [split]
cd /work/wt-mrcnn4
while read -r name epochs seed opts lr split; do
  [ -z "$name" ] && continue
  PYTHONPATH=$PWD OMP_NUM_THREADS=1 taskset -c 1 python exp/run.py --name "$name" --epochs "$epochs" --seed "$seed" --opts "$opts" --lr "${lr:-2e-3}" --split "${split:-val}" > "exp/$name.log" 2>&1
done < "$1"
