#!/bin/bash
# Validation sweep 2 (seed 0): fixed MIL, self-activating neutral head, balanced BCE targets with warm-up.
cd "$(dirname "$0")"
${PYTHON:-python} lab.py --split val --seeds 0 --configs '[
 {"name":"4 mil (empty set = uniform)","pool":"mil"},
 {"name":"N neutral b1 (on dropped half)","neutral":1.0},
 {"name":"N neutral b1 + eps 0.1","neutral":1.0,"eps":0.1},
 {"name":"K conflict balanced, warmup 10","term":"conflict","alpha":1.0,"balanced":true,"warmup":10},
 {"name":"N neutral b1 + certainty t0.5 balanced, warmup 10","neutral":1.0,"term":"certainty","alpha":1.0,"tau":0.5,"balanced":true,"warmup":10},
 {"name":"P proto balanced, warmup 10","term":"proto","alpha":1.0,"balanced":true,"warmup":10}
]' > val2.log 2>&1
