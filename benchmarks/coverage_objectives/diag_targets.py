"""Offline check of pseudo-target sources for the gate: fit a logistic probe on the
normalised token features (the gate's linear form) from each target source, on the first
6000 images of train[:8000] with the trained default model (seed 0) providing the head
and seeds; score AP on train[8000:] (validation)."""
import numpy as np, tensorflow as tf, lab
from sklearn.linear_model import LogisticRegression
row, m = lab.run({"name": "default"}, 0, "val", log=False)
tr = lab.subset(lab.load("train"), slice(0, 8000)); va = lab.subset(lab.load("train"), slice(8000, None))
W, c, w, b = m.W.numpy(), m.c.numpy(), m.w.numpy(), float(m.b.numpy())
def feats(d):
    x = d["x"]; n = np.linalg.norm(x, axis=-1); xh = x / (n[..., None] + 1e-6)
    lg = x @ W + c; z = xh @ w + b
    return x, xh, lg, z
x, xh, lg, z = feats(tr); on = tr["frac"] >= 0.1; y = tr["y"]
vx, vxh, vlg, vz = feats(va); von = va["frac"] >= 0.1
pred = lg.argmax(-1)                                  # token-alone prediction
maj = np.array([np.bincount(p, minlength=10).argmax() for p in pred])   # image's majority token class
conflict = maj != y
print("images whose majority token class != label: %.3f (true conflict rate 0.10); of them truly conflicting %.3f"
      % (conflict.mean(), (tr["bg"] != y)[conflict].mean()))
def fit(pos, neg, name):
    P = xh[pos]; N_ = xh[neg]
    rng = np.random.default_rng(0)
    if len(N_) > 60000: N_ = N_[rng.choice(len(N_), 60000, replace=False)]
    if len(P) > 60000: P = P[rng.choice(len(P), 60000, replace=False)]
    X = np.concatenate([P, N_]); Y = np.r_[np.ones(len(P)), np.zeros(len(N_))]
    clf = LogisticRegression(C=10.0, max_iter=300).fit(X, Y)
    s = vxh @ clf.coef_[0] + clf.intercept_[0]
    t = s > 0
    print(f"{name:55s} targets pos {pos.sum():6d} (on-object {on[pos].mean():.2f}) neg {neg.sum():6d} (on {on[neg].mean():.2f}) "
          f"-> val AP {lab.ap(s, von):.3f}; at 0: kept {t.mean():.3f} prec {(t&von).sum()/max(t.sum(),1):.3f} cov {(t&von).sum()/von.sum():.3f}")
    return clf
fit(on, ~on, "oracle (object tokens)")
keep_rank = np.argsort(np.argsort(z, 1), 1)  # 0 = lowest z = most kept
fit(z < 0, keep_rank >= 32, "self: kept vs bottom-half keep")
fit(z < 0, keep_rank >= 16, "self: kept vs bottom-3/4 keep")
cm = conflict[:, None]
fit((pred == y[:, None]) & cm, (pred == maj[:, None]) & cm, "conflict imgs: token->y vs token->majority")
fit((pred == y[:, None]) & cm, (pred != y[:, None]) & cm, "conflict imgs: token->y vs token->not y")
fit(pred == y[:, None], pred != y[:, None], "all imgs: token->y vs not (idea 1 argmax)")
cam = np.einsum("bnc,bc->bn", x, W.T[y])
fit(cam >= 0.5 * cam.max(1, keepdims=True), cam < 0.5 * cam.max(1, keepdims=True), "CAM >= 0.5 max (idea 2)")
