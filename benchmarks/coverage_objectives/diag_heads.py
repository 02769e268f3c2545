"""Offline: does a head trained with bias-conflicting images up-weighted give per-token
evidence that ranks object tokens? (train[:8000] -> val train[8000:])"""
import math, numpy as np, tensorflow as tf, keras, lab
tf.random.set_seed(0)
tr = lab.subset(lab.load("train"), slice(0, 8000)); va = lab.subset(lab.load("train"), slice(8000, None))
von = va["frac"] >= 0.1
def train_head(weights, pool="mean", epochs=10, seed=0):
    W = tf.Variable(keras.initializers.GlorotUniform(seed=seed)((128, 10))); c = tf.Variable(tf.zeros(10))
    opt = keras.optimizers.Adam(2e-3)
    X = tf.constant(tr["x"]); Y = tf.constant(tr["y"].astype(np.int32)); Wt = tf.constant(weights.astype(np.float32))
    @tf.function(jit_compile=True)
    def step(x, y, wt):
        with tf.GradientTape() as t:
            if pool == "mean": lg = tf.reduce_mean(x, 1) @ W + c
            else: lg = tf.reduce_max(tf.einsum("bnc,ck->bnk", x, W), 1) + c
            l = tf.reduce_sum(wt * tf.nn.sparse_softmax_cross_entropy_with_logits(y, lg)) / tf.reduce_sum(wt)
        opt.apply_gradients(zip(t.gradient(l, [W, c]), [W, c]))
    rng = np.random.default_rng(seed)
    for ep in range(epochs):
        p = rng.permutation(8000)
        for s in range(0, 8000, 64):
            i = tf.constant(p[s:s + 64]); step(tf.gather(X, i), tf.gather(Y, i), tf.gather(Wt, i))
    return W.numpy(), c.numpy()
def report(name, W, c, d=va, on=von):
    x = d["x"]; y = d["y"]; lg = x @ W + c
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    lpy = np.take_along_axis(lg, y[:, None, None].repeat(64, 1), -1)[..., 0] - lse
    cam = np.einsum("bnc,bc->bn", x, W.T[y])
    # contrast of the true class against the image's own token-mean evidence
    camc = cam - cam.mean(1, keepdims=True)
    pooled = (x.mean(1) @ W + c).argmax(-1); conf = d["bg"] != y
    print(f"{name:40s} acc {np.mean(pooled==y):.3f} (aligned {np.mean((pooled==y)[~conf]):.3f} conflict {np.mean((pooled==y)[conf]):.3f}) "
          f"AP: CAM {lab.ap(cam,on):.3f} CAM-centred {lab.ap(camc,on):.3f} log p_y {lab.ap(lpy,on):.3f}; token->y: obj {np.mean((lg.argmax(-1)==y[:,None])[on]):.2f} bg {np.mean((lg.argmax(-1)==y[:,None])[~on]):.2f}")
    return lg
ones = np.ones(8000)
W, c = train_head(ones); lg = report("GAP head, unweighted", W, c)
# conflict detection from this head's token-alone predictions on train
tlg = tr["x"] @ W + c; pred = tlg.argmax(-1)
maj = np.array([np.bincount(p, minlength=10).argmax() for p in pred]); det = maj != tr["y"]
conf = tr["bg"] != tr["y"]
print(f"detected conflicting {det.mean():.3f}, precision {conf[det].mean():.3f}, recall {det[conf].mean():.3f}")
for u in (9.0,):
    W2, c2 = train_head(np.where(conf, u, 1.0)); report(f"GAP, true conflicts x{u}", W2, c2)
    W3, c3 = train_head(np.where(det, u, 1.0)); report(f"GAP, detected conflicts x{u}", W3, c3)
    W4, c4 = train_head(np.where(det, u, 1.0), pool="max"); report(f"MAX pool, detected conflicts x{u}", W4, c4)
W5, c5 = train_head(ones, pool="max"); report("MAX pool, unweighted", W5, c5)
W6, c6 = train_head(conf.astype(float) + 1e-3); report("GAP, true conflicts only", W6, c6)
