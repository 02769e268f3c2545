#!/bin/bash
# Validation sweep 1 (seed 0, train[:8000] -> train[8000:]): one process at a time.
cd "$(dirname "$0")"
P=${PYTHON:-python}
$P lab.py --split val --seeds 0 --configs '[
 {"name":"default"},
 {"name":"1 suff k0.5","term":"suff","alpha":1.0,"tau":0.5},
 {"name":"1 suff k1","term":"suff","alpha":1.0,"tau":1.0},
 {"name":"2 cam raw t0.5","term":"cam","alpha":1.0,"tau":0.5},
 {"name":"2 cam raw t0.8","term":"cam","alpha":1.0,"tau":0.8},
 {"name":"2 cam norm t0.5","term":"cam_norm","alpha":1.0,"tau":0.5},
 {"name":"3 bas naive a0.3","term":"bas_naive","alpha":1.0,"area":0.3},
 {"name":"3 bas naive a1","term":"bas_naive","alpha":1.0,"area":1.0},
 {"name":"3 comp lin a1","term":"comp_lin","alpha":10.0,"area":1.0},
 {"name":"3 comp lin a2","term":"comp_lin","alpha":10.0,"area":2.0},
 {"name":"4 mil","pool":"mil"},
 {"name":"4 tokreward m0.69","term":"tokreward","alpha":1.0,"margin":0.693},
 {"name":"N neutral b1","neutral":1.0},
 {"name":"N neutral b1 + certainty t0.5","neutral":1.0,"term":"certainty","alpha":1.0,"tau":0.5},
 {"name":"K conflict","term":"conflict","alpha":1.0},
 {"name":"K conflict + neutral b1","term":"conflict","alpha":1.0,"neutral":1.0},
 {"name":"P proto","term":"proto","alpha":1.0}
]' 2>&1 | grep -E " VAL |Error|error"
