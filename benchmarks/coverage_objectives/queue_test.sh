#!/bin/bash
# Test runs (train 10k -> test, test_shuffled), seeds 0-2, hyperparameters chosen on validation.
cd "$(dirname "$0")"
P="${PYTHON:-python} lab.py --split test"
BEST='"neutral":1.0,"term":"certainty","alpha":1.0,"tau":0.5,"balanced":true,"warmup":10'
$P --seeds 0 1 2 --config "{\"name\":\"N neutral b1 + certainty t0.5 (start 0.95)\",$BEST}"
$P --seeds 1 2 --config '{"name":"default"}'
$P --seeds 0 1 2 --config "{\"name\":\"N neutral b1 + certainty t0.5 (start 0.2)\",$BEST,\"start\":0.2}"
$P --seeds 0 1 2 --configs '[
 {"name":"1 suff k0.5","term":"suff","alpha":1.0,"tau":0.5},
 {"name":"2 cam raw t0.8","term":"cam","alpha":1.0,"tau":0.8},
 {"name":"3 bas naive a0.3","term":"bas_naive","alpha":1.0,"area":0.3},
 {"name":"3 comp lin a1","term":"comp_lin","alpha":10.0,"area":1.0},
 {"name":"4 mil (empty set = uniform)","pool":"mil"}
]'
