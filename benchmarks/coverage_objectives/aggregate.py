"""Tables (mean ± std over seeds) from results/{val,test}.jsonl, plus reference scores
(feature magnitude, supervised probe) on the test split."""
import json, sys, numpy as np
from collections import OrderedDict
def rows(split):
    out = OrderedDict()
    for line in open(f"results/{split}.jsonl"):
        r = json.loads(line); out.setdefault(r["cfg"]["name"], {})[r["seed"]] = r   # last run per (name, seed) wins
    return out
def ms(v):
    v = np.array(v, float); return f"{np.nanmean(v):.3f} ± {np.nanstd(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"
def test_table(names=None):
    R = rows("test")
    print("| candidate | seeds | kept | precision | coverage | AP (keep prob.) | test acc | test_shuffled acc | drop | images keeping nothing | per-image std/mean kept |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, by in R.items():
        if names and name not in names: continue
        rs = [by[s] for s in sorted(by)]
        t = [r["test"] for r in rs]
        print(f"| {name} | {','.join(map(str, sorted(by)))} | {ms([x['kept'] for x in t])} | {ms([x['precision'] for x in t])} | "
              f"{ms([x['coverage'] for x in t])} | {ms([x['ap'] for x in t])} | {ms([x['acc'] for x in t])} | "
              f"{ms([r['test_shuffled']['acc'] for r in rs])} | {ms([r['drop'] for r in rs])} | {ms([x['empty'] for x in t])} | {ms([x['kept_rel_std'] for x in t])} |")
def val_table():
    R = rows("val")
    print("| candidate (seed 0, validation) | kept | precision | coverage | AP | acc | acc aligned / conflicting (drop proxy) |")
    print("|---|---|---|---|---|---|---|")
    for name, by in R.items():
        for s in sorted(by):
            v = by[s]["val"]
            print(f"| {name} (s{s}) | {v['kept']:.3f} | {v['precision']:.3f} | {v['coverage']:.3f} | {v['ap']:.3f} | {v['acc']:.3f} | "
                  f"{v['acc_aligned']:.3f} / {v['acc_conflict']:.3f} ({v['drop_proxy']:.3f}) |")
if __name__ == "__main__":
    {"val": val_table, "test": test_table}[sys.argv[1]]()
