"""Offline ceiling: how well can per-token CLASS evidence rank object tokens, if the
per-token digit classifier is trained on true object tokens only (oracle)?"""
import numpy as np, tensorflow as tf, keras, lab
from sklearn.linear_model import LogisticRegression
tr = lab.subset(lab.load("train"), slice(0, 8000)); va = lab.subset(lab.load("train"), slice(8000, None))
on = tr["frac"] >= 0.1; von = va["frac"] >= 0.1
X = tr["x"][on]; Y = np.repeat(tr["y"][:, None], 64, 1)[on]
clf = LogisticRegression(C=1.0, max_iter=500).fit(X[:40000], Y[:40000])
lp = clf.predict_log_proba(va["x"].reshape(-1, 128)).reshape(2000, 64, 10)
y = va["y"]; lpy = np.take_along_axis(lp, y[:, None, None].repeat(64, 1), -1)[..., 0]
ent = -(np.exp(lp) * lp).sum(-1)
print("oracle per-token digit classifier: object-token acc %.3f, background tokens ->y %.3f" %
      (np.mean(lp.argmax(-1)[von] == np.repeat(y[:, None], 64, 1)[von]), np.mean(lp.argmax(-1)[~von] == np.repeat(y[:, None], 64, 1)[~von])))
print("AP log p_y %.3f, -entropy %.3f, max prob %.3f" % (lab.ap(lpy, von), lab.ap(-ent, von), lab.ap(np.exp(lp).max(-1), von)))
# distance from the object: AP of bg tokens adjacent to object vs far
import scipy.ndimage as nd
adj = np.array([nd.binary_dilation(o.reshape(8, 8), np.ones((3, 3))).ravel() for o in von]) & ~von
print("bg tokens adjacent to object: %.3f of all tokens; p_y>0.5 rate: object %.2f adjacent-bg %.2f far-bg %.2f" %
      (adj.mean(), (np.exp(lpy) > .5)[von].mean(), (np.exp(lpy) > .5)[adj].mean(), (np.exp(lpy) > .5)[~von & ~adj].mean()))
# same for the oracle objectness probe
xh = lambda x: x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-6)
pr = LogisticRegression(C=10.0, max_iter=300).fit(xh(tr["x"][:3000]).reshape(-1, 128), on[:3000].ravel())
s = (xh(va["x"]).reshape(-1, 128) @ pr.coef_[0] + pr.intercept_[0]).reshape(2000, 64)
print("oracle objectness probe AP %.3f; s>0 rate: object %.2f adjacent-bg %.2f far-bg %.2f" % (lab.ap(s, von), (s > 0)[von].mean(), (s > 0)[adj].mean(), (s > 0)[~von & ~adj].mean()))
np.save("features/val_adjacent.npy", adj)
