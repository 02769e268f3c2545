"""Offline: with the default gate (seed 0, trained on train[:8000]) fixed, train heads on the
mean of kept tokens with (a) bias-conflicting images up-weighted (detected by the token
majority vote) or (b) a term that makes the head uninformative on confidently dropped tokens;
then: does the head's per-token evidence rank object tokens (val AP)?"""
import numpy as np, tensorflow as tf, keras, lab
row, m = lab.run({"name": "default"}, 0, "val", log=False)
w, b = m.w.numpy(), float(m.b.numpy())
tr = lab.subset(lab.load("train"), slice(0, 8000)); va = lab.subset(lab.load("train"), slice(8000, None))
von = va["frac"] >= 0.1
def gate(d):
    x = d["x"]; xh = x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-6); z = xh @ w + b
    rank = np.argsort(np.argsort(z, 1), 1)
    return (z < 0).astype(np.float32), (rank >= 32).astype(np.float32)
g_tr, bgc_tr = gate(tr)
W0, c0 = m.W.numpy(), m.c.numpy()
pred = (tr["x"] @ W0 + c0).argmax(-1)
maj = np.array([np.bincount(p, minlength=10).argmax() for p in pred]); det = maj != tr["y"]
conf = tr["bg"] != tr["y"]
print(f"masked head: detected conflicting {det.mean():.3f}, precision {conf[det].mean():.3f}, recall {det[conf].mean():.3f}")
def train_head(weights, beta=0.0, epochs=10, seed=0):
    W = tf.Variable(keras.initializers.GlorotUniform(seed=seed)((128, 10))); c = tf.Variable(tf.zeros(10))
    opt = keras.optimizers.Adam(2e-3)
    X = tf.constant(tr["x"]); Y = tf.constant(tr["y"].astype(np.int32)); Wt = tf.constant(weights.astype(np.float32))
    G = tf.constant(g_tr); BG = tf.constant(bgc_tr)
    @tf.function(jit_compile=True)
    def step(x, y, wt, g, bg):
        with tf.GradientTape() as t:
            pool = tf.einsum("bn,bnc->bc", g, x) / (tf.reduce_sum(g, 1, keepdims=True) + 0.064)
            l = tf.reduce_sum(wt * tf.nn.sparse_softmax_cross_entropy_with_logits(y, pool @ W + c)) / tf.reduce_sum(wt)
            if beta:
                lp = tf.nn.log_softmax(tf.einsum("bnc,ck->bnk", x, W) + c)
                unif = -tf.reduce_mean(lp, -1)        # CE to the uniform distribution
                l += beta * tf.reduce_sum(bg * unif) / tf.reduce_sum(bg)
        opt.apply_gradients(zip(t.gradient(l, [W, c]), [W, c]))
    rng = np.random.default_rng(seed)
    for ep in range(epochs):
        p = rng.permutation(8000)
        for s in range(0, 8000, 64):
            i = tf.constant(p[s:s + 64]); step(tf.gather(X, i), tf.gather(Y, i), tf.gather(Wt, i), tf.gather(G, i), tf.gather(BG, i))
    return W.numpy(), c.numpy()
def report(name, W, c, d=va, on=von):
    x = d["x"]; y = d["y"]; lg = x @ W + c
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    lp = lg - lse[..., None]
    lpy = np.take_along_axis(lp, y[:, None, None].repeat(64, 1), -1)[..., 0]
    cam = np.einsum("bnc,bc->bn", x, W.T[y]); conf_ = np.exp(lp).max(-1)
    ent = -(np.exp(lp) * lp).sum(-1)
    g, _ = gate(d); pooled = ((g[..., None] * x).sum(1) / (g.sum(1, keepdims=True) + 0.064) @ W + c).argmax(-1)
    cf = d["bg"] != y
    print(f"{name:34s} acc {np.mean(pooled==y):.3f} (conflict {np.mean((pooled==y)[cf]):.3f}) AP: CAM {lab.ap(cam,on):.3f} "
          f"log p_y {lab.ap(lpy,on):.3f} max-prob {lab.ap(conf_,on):.3f} -entropy {lab.ap(-ent,on):.3f}; token->y obj {np.mean((lg.argmax(-1)==y[:,None])[on]):.2f} bg {np.mean((lg.argmax(-1)==y[:,None])[~on]):.2f}")
report("default head (trained with gate)", W0, c0)
ones = np.ones(8000)
report("refit, unweighted", *train_head(ones))
report("refit, detected conflicts x9", *train_head(np.where(det, 9.0, 1.0)))
report("refit, detected conflicts x81", *train_head(np.where(det, 81.0, 1.0)))
for beta in (0.3, 1.0, 3.0):
    report(f"refit + neutral-on-dropped beta {beta}", *train_head(ones, beta))
report("refit x9 + neutral beta 1", *train_head(np.where(det, 9.0, 1.0), 1.0))
