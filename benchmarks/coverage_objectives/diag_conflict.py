"""Offline: in bias-conflicting images (background != label), which tokens carry evidence
for the label? object / adjacent-background / far-background, under a head trained on
the default's kept tokens (seed 0) and under the oracle per-token classifier."""
import numpy as np, scipy.ndimage as nd, lab
from sklearn.linear_model import LogisticRegression
row, m = lab.run({"name": "default"}, 0, "val", log=False)
tr = lab.subset(lab.load("train"), slice(0, 8000))
on = tr["frac"] >= 0.1
adj = np.array([nd.binary_dilation(o.reshape(8, 8), np.ones((3, 3))).ravel() for o in on]) & ~on
far = ~on & ~adj
cf = tr["bg"] != tr["y"]
Y = np.repeat(tr["y"][:, None], 64, 1); B = np.repeat(tr["bg"][:, None], 64, 1)
def rates(name, lg):
    p = lg.argmax(-1)
    for nm, msk in (("object", on), ("adjacent", adj), ("far", far)):
        mm = msk & cf[:, None]
        print(f"  {name:18s} conflict imgs, {nm:8s}: ->label {np.mean(p[mm]==Y[mm]):.2f}  ->background's class {np.mean(p[mm]==B[mm]):.2f}  (n={mm.sum()})")
rates("default head", tr["x"] @ m.W.numpy() + m.c.numpy())
X = tr["x"][on]; clf = LogisticRegression(max_iter=500).fit(X[:40000], Y[on][:40000])
rates("oracle tok. clf", clf.decision_function(tr["x"].reshape(-1, 128)).reshape(8000, 64, 10))
