#!/bin/bash
cd "$(dirname "$0")"
${PYTHON:-python} lab.py --split val --seeds 0 --configs '[
 {"name":"C conflict sum-pool eps_c 0.3","eps_conflict":0.3},
 {"name":"N neutral b1 + certainty t0.3 balanced, warmup 10","neutral":1.0,"term":"certainty","alpha":1.0,"tau":0.3,"balanced":true,"warmup":10},
 {"name":"C conflict sum-pool eps_c 0.3 + neutral b1 + certainty t0.5 bal. w10","eps_conflict":0.3,"neutral":1.0,"term":"certainty","alpha":1.0,"tau":0.5,"balanced":true,"warmup":10}
]' > val3.log 2>&1
