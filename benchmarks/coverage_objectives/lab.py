"""Compact re-implementation of the default EnergyMask (hard-concrete gates,
mask-mass pooling, keeping cost) on cached frozen features, and the coverage
candidates of issue 23. Single-threaded TensorFlow.

    python lab.py --config '{"name": "default"}' --seeds 0 1 2 --split test
    python lab.py --config '{...}' --seeds 0 --split val     # train[:8000] -> train[8000:]

Every run appends one JSON line to results/<split>.jsonl.
"""
import argparse, json, math, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_NUM_INTRAOP_THREADS"] = "1"; os.environ["TF_NUM_INTEROP_THREADS"] = "1"
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
import keras
from sklearn.metrics import average_precision_score

HERE = os.path.dirname(os.path.abspath(__file__))
FEAT = os.environ.get("LAB_FEAT", f"{HERE}/features")
N_TOK, C, K = 64, 128, 10
LOW, HIGH = -0.1, 1.1          # hard-concrete stretch
ON_OBJECT = 0.1
JIT = os.environ.get("LAB_JIT", "1") == "1"

DEFAULTS = dict(
    name="default", T=2.0 / 3.0, lam=0.01, gam=0.01, eps=1e-3, start=0.95,
    epochs=20, batch=64, lr=2e-3, wd=1e-4,
    # candidate terms (0 = off)
    term="none",        # none | suff | suff_argmax | cam | cam_norm | comp_lin | bas_naive | mil | tokreward
    alpha=0.0,          # weight of the extra term
    tau=0.5,            # relative threshold (cam: of max; comp_lin: of mean; suff: kappa)
    area=0.0,           # area cost (bas_naive / comp_lin), per kept token (mean keep)
    margin=0.0,         # tokreward: keep iff -log p_y(x_i) < margin
    warmup=0,           # epochs before the extra term switches on (linear ramp over 1 epoch)
    pool="mean",        # mean (mask-mass) | mil (per-token log-likelihood pooling)
    balanced=False,     # BCE terms: positives and negatives weighted equally
    eps_conflict=None,  # pool eps in bias-conflicting images (majority token class != label); None = eps
    neutral_gate=True,  # neutral term only on tokens with z > 0 (dropped at inference)
    neutral=0.0,        # beta: head trained to be uninformative on the confidently dropped half
)


def load(split):
    d = {k: np.load(f"{FEAT}/{split}_{k}.npy") for k in ("x", "y", "frac", "area")}
    d["x"] = d["x"].reshape(len(d["x"]), N_TOK, C)
    d["frac"] = d["frac"].reshape(len(d["x"]), N_TOK)
    if os.path.exists(f"{FEAT}/{split}_bg.npy"):
        d["bg"] = np.load(f"{FEAT}/{split}_bg.npy")
    return d


def subset(d, sl):
    return {k: v[sl] for k, v in d.items()}


def redundancy(x):
    """r_i: mean cosine of token i to its in-grid 8-neighbours (a constant)."""
    xn = x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-6)
    g = xn.reshape(-1, 8, 8, C)
    s = np.zeros(g.shape[:3], np.float32); cnt = np.zeros((8, 8), np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            sh = np.zeros_like(g); m = np.zeros((8, 8), np.float32)
            ys, yd = (slice(dy, 8), slice(0, 8 - dy)) if dy >= 0 else (slice(0, 8 + dy), slice(-dy, 8))
            xs, xd = (slice(dx, 8), slice(0, 8 - dx)) if dx >= 0 else (slice(0, 8 + dx), slice(-dx, 8))
            sh[:, yd, xd] = g[:, ys, xs]; m[yd, xd] = 1
            s += (g * sh).sum(-1); cnt += m
    return (s / cnt).reshape(-1, N_TOK).astype(np.float32)


class Model:
    def __init__(self, cfg, seed):
        self.cfg = cfg
        T = cfg["T"]
        b0 = -T * math.log(cfg["start"] / (1 - cfg["start"]))   # models.initial_keep_bias
        self.w = tf.Variable(tf.zeros([C]), name="score_kernel")
        self.b = tf.Variable(b0, dtype=tf.float32, name="score_bias")
        init = keras.initializers.GlorotUniform(seed=seed)
        self.W = tf.Variable(init((C, K)), name="dense_kernel")
        self.c = tf.Variable(tf.zeros([K]), name="dense_bias")
        self.vars = [self.w, self.b, self.W, self.c]

    def scores(self, x):
        n = tf.norm(x, axis=-1, keepdims=True)
        xh = x / (n + 1e-6)
        return tf.einsum("bnc,c->bn", xh, self.w) + self.b, xh

    def keep(self, z):
        return tf.sigmoid(-z - self.cfg["T"] * math.log(-LOW / HIGH))

    def pool(self, x, g):
        eps = self.cfg["eps"]
        return tf.einsum("bn,bnc->bc", g, x) / (tf.reduce_sum(g, 1, keepdims=True) + eps * N_TOK)

    def predict_logits(self, x, g):
        if self.cfg["pool"] == "mil":
            lp = tf.nn.log_softmax(tf.einsum("bnc,ck->bnk", x, self.W) + self.c)
            return tf.einsum("bn,bnk->bk", g, lp) / (tf.reduce_sum(g, 1, keepdims=True) + 1e-6)
        return self.pool(x, g) @ self.W + self.c


def make_step(model, opt, cfg, seed):
    T, lam, gam = cfg["T"], cfg["lam"], cfg["gam"]
    gen = tf.random.Generator.from_seed(seed + 1000)
    term, tau = cfg["term"], cfg["tau"]

    def bce(t, keep, valid=None):
        """BCE(keep, t) over the valid tokens; balanced: mean over positives + mean over negatives, halved."""
        valid = tf.ones_like(t) if valid is None else valid
        l = keras.losses.binary_crossentropy(t[..., None], keep[..., None])
        if not cfg["balanced"]:
            return tf.reduce_sum(l * valid) / (tf.reduce_sum(valid) + 1.0)
        p, n_ = t * valid, (1 - t) * valid
        return 0.5 * (tf.reduce_sum(l * p) / (tf.reduce_sum(p) + 1.0) + tf.reduce_sum(l * n_) / (tf.reduce_sum(n_) + 1.0))

    def step(x, y, r, ramp):
        B = tf.shape(x)[0]
        u = gen.uniform([B, N_TOK], 1e-6, 1 - 1e-6)
        noise = tf.math.log(u) - tf.math.log1p(-u)
        yoh = tf.one_hot(y, K)
        with tf.GradientTape() as tape:
            z, xh = model.scores(x)
            keep = model.keep(z)
            g = tf.clip_by_value(tf.sigmoid((noise - z) / T) * (HIGH - LOW) + LOW, 0.0, 1.0)
            if cfg["pool"] == "mil":
                lp = tf.nn.log_softmax(tf.einsum("bnc,ck->bnk", x, model.W) + model.c)
                lpy = tf.reduce_sum(lp * yoh[:, None, :], -1)
                # mean of per-token log-likelihoods over kept tokens; an empty set is worth a
                # uniform prediction (eps*N virtual tokens at log K), as the mask-mass pool's empty set
                en = cfg["eps"] * N_TOK
                ce = tf.reduce_mean((tf.reduce_sum(-g * lpy, 1) + en * math.log(K)) / (tf.reduce_sum(g, 1) + en))
            elif cfg["eps_conflict"] is not None:
                # sum-like pool in bias-conflicting images, where background tokens argue for another class
                tlc = tf.einsum("bnc,ck->bnk", x, tf.stop_gradient(model.W)) + tf.stop_gradient(model.c)
                cnt = tf.reduce_sum(tf.one_hot(tf.argmax(tlc, -1, output_type=tf.int32), K), 1)
                confl = tf.cast(tf.not_equal(tf.argmax(cnt, -1, output_type=tf.int32), y), tf.float32)[:, None]
                epsi = (confl * cfg["eps_conflict"] + (1 - confl) * cfg["eps"]) * N_TOK
                pooled = tf.einsum("bn,bnc->bc", g, x) / (tf.reduce_sum(g, 1, keepdims=True) + epsi)
                logits = pooled @ model.W + model.c
                ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
            else:
                logits = model.pool(x, g) @ model.W + model.c
                ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
            reg = tf.reduce_mean(keep * (lam + gam * r))
            extra = tf.constant(0.0)
            # ---- candidate terms: head weights gradient-stopped ----
            Ws, cs = tf.stop_gradient(model.W), tf.stop_gradient(model.c)
            if term in ("suff", "suff_argmax", "tokreward"):
                tl = tf.einsum("bnc,ck->bnk", x, Ws) + cs            # head on each token alone
                lpt = tf.nn.log_softmax(tl)
                lpy = tf.reduce_sum(lpt * yoh[:, None, :], -1)       # log p_y(x_i)
                if term == "suff":
                    full = tf.stop_gradient(tf.nn.log_softmax(model.pool(x, g) @ Ws + cs))
                    lpool = tf.reduce_sum(full * yoh, -1, keepdims=True)
                    t = tf.cast(lpy >= lpool + math.log(tau), tf.float32)
                    extra = bce(t, keep)
                elif term == "suff_argmax":
                    t = tf.cast(tf.equal(tf.argmax(tl, -1, output_type=tf.int32), y[:, None]), tf.float32)
                    extra = bce(t, keep)
                else:   # linear reward: keep token i iff -log p_y(x_i) < margin
                    extra = tf.reduce_mean(keep * (-lpy - cfg["margin"]))
            elif term in ("cam", "cam_norm", "comp_lin"):
                src = xh if term == "cam_norm" else x
                cam = tf.einsum("bnc,bc->bn", src, tf.gather(tf.transpose(Ws), y))
                if term == "comp_lin":
                    a = tf.nn.relu(cam)
                    share = a / (tf.reduce_sum(a, 1, keepdims=True) + 1e-6)
                    # evidence left in the dropped tokens / evidence of all tokens, + area
                    extra = tf.reduce_mean(tf.reduce_sum((1 - keep) * share, 1)) \
                        + cfg["area"] * tf.reduce_mean(keep)
                else:
                    mx = tf.reduce_max(cam, 1, keepdims=True)
                    t = tf.cast(cam >= tau * mx, tf.float32)
                    extra = bce(t, keep)
            elif term in ("certainty", "conflict"):
                tl = tf.einsum("bnc,ck->bnk", x, Ws) + cs
                lpt = tf.nn.log_softmax(tl)
                if term == "certainty":   # class-agnostic: 1 - H(p_i)/log K >= tau
                    cert = 1 + tf.reduce_sum(tf.exp(lpt) * lpt, -1) / math.log(K)
                    t = tf.cast(cert >= tau, tf.float32)
                    extra = bce(t, keep)
                else:   # bias-conflicting images: majority token class != label
                    pred = tf.argmax(tl, -1, output_type=tf.int32)
                    counts = tf.reduce_sum(tf.one_hot(pred, K), 1)
                    maj = tf.argmax(counts, -1, output_type=tf.int32)
                    conflict = tf.cast(tf.not_equal(maj, y), tf.float32)[:, None]
                    pos = tf.cast(tf.equal(pred, y[:, None]), tf.float32) * conflict
                    neg = tf.cast(tf.equal(pred, maj[:, None]), tf.float32) * conflict
                    extra = bce(pos, keep, pos + neg)
            elif term == "proto":   # per-image prototypes: kept tokens vs the dropped half
                kept_h = tf.stop_gradient(tf.cast(z < 0, tf.float32))
                zs = tf.stop_gradient(z)
                med = tf.sort(zs, axis=1)[:, N_TOK // 2 - 1:N_TOK // 2]
                bot = tf.cast(zs > med, tf.float32)
                mk = tf.einsum("bn,bnc->bc", kept_h, xh) / (tf.reduce_sum(kept_h, 1, keepdims=True) + 1e-6)
                mb = tf.einsum("bn,bnc->bc", bot, xh) / (tf.reduce_sum(bot, 1, keepdims=True) + 1e-6)
                cs_k = tf.einsum("bnc,bc->bn", xh, tf.math.l2_normalize(mk, -1))
                cs_b = tf.einsum("bnc,bc->bn", xh, tf.math.l2_normalize(mb, -1))
                has = tf.cast(tf.reduce_sum(kept_h, 1, keepdims=True) > 0, tf.float32)
                t = tf.cast(cs_k > cs_b, tf.float32)
                extra = bce(t, keep, has * tf.ones_like(t))
            elif term == "bas_naive":
                full = tf.nn.softmax(model.pool(x, tf.ones_like(g)) @ Ws + cs)
                comp = tf.nn.softmax(model.pool(x, 1 - g) @ Ws + cs)
                ratio = tf.reduce_sum(comp * yoh, -1) / (tf.reduce_sum(full * yoh, -1) + 1e-6)
                extra = tf.reduce_mean(ratio) + cfg["area"] * tf.reduce_mean(keep)
            loss = ce + reg + ramp * cfg["alpha"] * extra
            if cfg["neutral"]:   # head (trained) uninformative on the half of tokens the gate ranks lowest
                zs = tf.stop_gradient(z)
                med = tf.sort(zs, axis=1)[:, N_TOK // 2 - 1:N_TOK // 2]
                bot = tf.cast(zs > med, tf.float32)
                if cfg["neutral_gate"]:   # only tokens the gate already drops (inactive at a keep-all start)
                    bot = bot * tf.cast(zs > 0, tf.float32)
                lph = tf.nn.log_softmax(tf.einsum("bnc,ck->bnk", x, model.W) + model.c)
                unif = -tf.reduce_mean(lph, -1)
                loss += ramp * cfg["neutral"] * tf.reduce_sum(bot * unif) / (tf.reduce_sum(bot) + 1.0)
        grads = tape.gradient(loss, model.vars)
        opt.apply_gradients(zip(grads, model.vars))
        return ce, extra
    return step


def make_epoch(step, xt, yt, rt):
    """One XLA-compiled loop over the full batches of an epoch (rows of idx)."""
    @tf.function(jit_compile=JIT)
    def epoch(idx, ramp):
        ce = tf.constant(0.0); extra = tf.constant(0.0)
        for s in tf.range(tf.shape(idx)[0]):
            i = idx[s]
            ce, extra = step(tf.gather(xt, i), tf.gather(yt, i), tf.gather(rt, i), ramp)
        return ce, extra
    return epoch


def infer(model, d, r=None, bs=500):
    zs, preds = [], []
    for i in range(0, len(d["y"]), bs):
        x = tf.constant(d["x"][i:i + bs])
        z, _ = model.scores(x)
        g = tf.cast(z < 0, tf.float32)
        preds.append(np.argmax(model.predict_logits(x, g).numpy(), -1))
        zs.append(z.numpy())
    return np.concatenate(zs), np.concatenate(preds)


def ap(scores, on):
    return float(average_precision_score(on.ravel(), scores.ravel()))


def mask_metrics(z, d):
    on = d["frac"] >= ON_OBJECT
    kept = z < 0
    frac = kept.mean(1)
    return dict(
        kept=float(frac.mean()), kept_rel_std=float(frac.std() / max(frac.mean(), 1e-9)),
        precision=float((kept & on).sum() / max(kept.sum(), 1)),
        coverage=float((kept & on).sum() / on.sum()),
        empty=float((~kept.any(1)).mean()),
        ap=ap(-z, on),
    )


def run(cfg, seed, split, log=True):
    cfg = {**DEFAULTS, **cfg}
    keras.utils.set_random_seed(seed)
    train = load("train")
    if split == "val":
        evals = {"val": subset(train, slice(8000, None))}
        train = subset(train, slice(0, 8000))
    else:
        evals = {"test": load("test"), "test_shuffled": load("test_shuffled")}
    r_train = redundancy(train["x"])
    n = len(train["y"])
    spe = int(math.ceil(n / cfg["batch"]))
    total = cfg["epochs"] * spe
    model = Model(cfg, seed)
    sched = keras.optimizers.schedules.CosineDecay(cfg["lr"], total)
    opt = keras.optimizers.AdamW(learning_rate=sched, weight_decay=cfg["wd"])
    step = make_step(model, opt, cfg, seed)
    rng = np.random.default_rng(seed)
    xt = tf.constant(train["x"]); yt = tf.constant(train["y"].astype(np.int32)); rt = tf.constant(r_train)
    t0 = time.time()
    epoch = make_epoch(step, xt, yt, rt)
    last = tf.function(step, jit_compile=JIT)      # the partial last batch, as keras fit
    bs = cfg["batch"]; full = n // bs
    for ep in range(cfg["epochs"]):
        perm = rng.permutation(n)
        ramp = tf.constant(float(np.clip(ep - cfg["warmup"] + 1, 0, 1)) if cfg["warmup"] else 1.0)
        ce, extra = epoch(tf.constant(perm[:full * bs].reshape(full, bs)), ramp)
        if n % bs:
            i = tf.constant(perm[full * bs:])
            ce, extra = last(tf.gather(xt, i), tf.gather(yt, i), tf.gather(rt, i), ramp)
    row = dict(cfg=cfg, seed=seed, split=split, seconds=time.time() - t0,
               final_ce=float(ce), final_extra=float(extra))
    for name, d in evals.items():
        z, pred = infer(model, d)
        acc = float((pred == d["y"]).mean())
        row[name] = dict(acc=acc, **mask_metrics(z, d))
        if name == "val":   # background-reliance proxy: images whose background != label
            conflict = d["bg"] != d["y"]
            row[name]["acc_aligned"] = float((pred == d["y"])[~conflict].mean())
            row[name]["acc_conflict"] = float((pred == d["y"])[conflict].mean())
            row[name]["drop_proxy"] = row[name]["acc_aligned"] - row[name]["acc_conflict"]
    if "test" in row:
        row["drop"] = row["test"]["acc"] - row["test_shuffled"]["acc"]
    if log:
        os.makedirs(f"{HERE}/results", exist_ok=True)
        with open(f"{HERE}/results/{split}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    return row, model


def summary(row):
    if row["split"] == "val":
        v = row["val"]
        return (f"{row['cfg']['name']} s{row['seed']} VAL acc {v['acc']:.3f} drop~ {v['drop_proxy']:.3f} "
                f"kept {v['kept']:.3f} prec {v['precision']:.3f} cov {v['coverage']:.3f} "
                f"AP {v['ap']:.3f} empty {v['empty']:.3f} ({row['seconds']:.0f}s)")
    t = row["test"]
    return (f"{row['cfg']['name']} s{row['seed']} TEST acc {t['acc']:.3f} shuf {row['test_shuffled']['acc']:.3f} "
            f"drop {row['drop']:.3f} kept {t['kept']:.3f} prec {t['precision']:.3f} cov {t['coverage']:.3f} "
            f"AP {t['ap']:.3f} empty {t['empty']:.3f} ({row['seconds']:.0f}s)")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="{}")
    p.add_argument("--configs", default=None, help="JSON list of configs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--split", default="val", choices=["val", "test"])
    a = p.parse_args()
    cfgs = json.loads(a.configs) if a.configs else [json.loads(a.config)]
    for cfg in cfgs:
        for seed in a.seeds:
            row, _ = run(cfg, seed, a.split)
            print(summary(row), flush=True)
