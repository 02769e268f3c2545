"""Diagnostic: which per-token scores of a trained default model rank object tokens
(validation split: trained on train[:8000], scored on train[8000:])."""
import json, numpy as np, tensorflow as tf, lab
row, m = lab.run({"name": "default"}, 0, "val")
print(lab.summary(row))
d = lab.subset(lab.load("train"), slice(8000, None))
x = d["x"]; y = d["y"]; on = d["frac"] >= lab.ON_OBJECT
W, c, w = m.W.numpy(), m.c.numpy(), m.w.numpy()
n = np.linalg.norm(x, axis=-1); xh = x / (n[..., None] + 1e-6)
logits = x @ W + c
lp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
lpy = np.take_along_axis(lp, y[:, None, None].repeat(64, 1), -1)[..., 0]
cam = np.einsum("bnc,bc->bn", x, W.T[y]); camn = np.einsum("bnc,bc->bn", xh, W.T[y])
z = xh @ w + m.b.numpy()
correct = logits.argmax(-1) == y[:, None]
def mm(s):  # per-image min-max
    lo, hi = s.min(1, keepdims=True), s.max(1, keepdims=True); return (s - lo) / (hi - lo + 1e-12)
out = {}
for name, s in [("keep(-z)", -z), ("magnitude", n), ("CAM_y raw", cam), ("CAM_y normalised", camn),
                ("log p_y(x_i)", lpy), ("CAM_y raw / max", cam / np.abs(cam).max(1, keepdims=True))]:
    out[name] = (lab.ap(s, on), lab.ap(mm(s), on))
    print(f"{name:22s} AP pooled {out[name][0]:.3f}  per-image min-max {out[name][1]:.3f}")
print("token alone classifies true class: object tokens %.3f, background tokens %.3f" % (correct[on].mean(), correct[~on].mean()))
conf = d["bg"] != y
print("  background tokens, aligned images %.3f, conflicting images %.3f" % (correct[~on & ~conf[:, None]].mean(), correct[~on & conf[:, None]].mean()))
for tau in (0.3, 0.5, 0.7):
    t = cam >= tau * cam.max(1, keepdims=True)
    print(f"CAM >= {tau} max: kept {t.mean():.3f} prec {(t & on).sum()/t.sum():.3f} cov {(t & on).sum()/on.sum():.3f}")
pool = np.exp(lpy)
for thr in (0.5, 0.9):
    t = np.exp(lpy) >= thr
    print(f"p_y(x_i) >= {thr}: kept {t.mean():.3f} prec {(t & on).sum()/t.sum():.3f} cov {(t & on).sum()/on.sum():.3f}")
t = correct; print(f"argmax correct: kept {t.mean():.3f} prec {(t & on).sum()/t.sum():.3f} cov {(t & on).sum()/on.sum():.3f}")
