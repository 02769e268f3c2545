"""Offline: per-image prototype expansion from the default gate's kept tokens (seed 0):
score_i = sim(x_i, mean of kept) - sim(x_i, mean of the bottom-half tokens); variants."""
import numpy as np, lab
row, m = lab.run({"name": "default"}, 0, "val", log=False)
va = lab.subset(lab.load("train"), slice(8000, None)); on = va["frac"] >= 0.1
adj = np.load("features/val_adjacent.npy")
x = va["x"]; n = np.linalg.norm(x, axis=-1, keepdims=True); xh = x / (n + 1e-6)
z = xh @ m.w.numpy() + float(m.b.numpy()); keep = 1 / (1 + np.exp(z - 1.599))
rank = np.argsort(np.argsort(z, 1), 1); kept = (z < 0); bot = rank >= 32
print("default keep AP %.3f" % lab.ap(-z, on))
def proto(f, wk, wb):
    mk = (wk[..., None] * f).sum(1) / (wk.sum(1)[:, None] + 1e-9); mb = (wb[..., None] * f).sum(1) / (wb.sum(1)[:, None] + 1e-9)
    return mk, mb
def show(name, s, thr=0.0):
    t = s > thr
    print(f"{name:50s} AP {lab.ap(s, on):.3f}  >{thr}: kept {t.mean():.3f} prec {(t&on).sum()/max(t.sum(),1):.3f} cov {(t&on).sum()/on.sum():.3f} adjacent-bg kept {t[adj].mean():.2f}")
cos = lambda a, b: (a * b[:, None]).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)[:, None] + 1e-9)
for fname, f in (("normalised", xh), ("raw", x), ("centred (minus image mean)", x - x.mean(1, keepdims=True)),
                 ("normalised, centred", xh - xh.mean(1, keepdims=True))):
    mk, mb = proto(f, kept.astype(float), bot.astype(float))
    show(f"{fname}: cos(kept) - cos(bottom half)", cos(f, mk) - cos(f, mb))
    mk, mb = proto(f, keep, 1 - keep)
    show(f"{fname}: soft keep-weighted prototypes", cos(f, mk) - cos(f, mb))
xc = xh - xh.mean(1, keepdims=True)
show("contrast to image mean (1 - cos(x, mean))", 1 - cos(xh, xh.mean(1)), 0.5)
show("magnitude", n[..., 0], float(np.median(n)))
