"""Label-free reference scores on the test split: pooled token AP vs object tokens."""
import numpy as np, lab
for split in ("test",):
    d = lab.load(split); on = d["frac"] >= lab.ON_OBJECT; n = np.linalg.norm(d["x"], axis=-1)
    mm = (n - n.min(1, keepdims=True)) / (n.max(1, keepdims=True) - n.min(1, keepdims=True) + 1e-12)
    xh = d["x"] / (n[..., None] + 1e-6); c = 1 - (xh * xh.mean(1, keepdims=True)).sum(-1) / np.linalg.norm(xh.mean(1), axis=-1)[:, None]
    print(f"{split}: base rate {on.mean():.3f}; feature magnitude AP pooled {lab.ap(n, on):.3f}, per-image min-max {lab.ap(mm, on):.3f}; contrast to image mean {lab.ap(c, on):.3f}")
