"""Cache the frozen BenchmarkConvNet features (8x8x128) of train/test/test_shuffled,
with labels, per-token object fractions (keras_ersm.evaluation.object_tokens), object
areas, and (train only) background ids. Run once; single-threaded."""
import os, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_NUM_INTRAOP_THREADS"] = "1"; os.environ["TF_NUM_INTEROP_THREADS"] = "1"
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
import numpy as np
from keras_ersm import pretraining
from keras_ersm.datasets import load_benchmark
from keras_ersm.evaluation import object_tokens

OUT = os.path.dirname(os.path.abspath(__file__)) + "/features"
os.makedirs(OUT, exist_ok=True)
t0 = time.time()
backbone, info = pretraining.pretrained_benchmark_backbone(64, verbose=0)
print("backbone", info, flush=True)
assert info["cached"], "backbone not cached: do not pre-train here"

for split in ("train", "test", "test_shuffled"):
    data = load_benchmark(split, 128, 64, backbone=pretraining.BACKBONE,
                          with_object_masks=True, shuffle=False)
    xs, ys, objs = [], [], []
    for images, labels, objects in data:
        xs.append(np.asarray(backbone(images, training=False), np.float32))
        ys.append(np.asarray(labels)); objs.append(np.asarray(objects))
    x = np.concatenate(xs); y = np.concatenate(ys); objects = np.concatenate(objs)
    frac = object_tokens.object_token_fractions(objects, x.shape[1:3]).astype(np.float32)
    areas = (objects >= 0.5).reshape(len(objects), -1).mean(1)
    np.save(f"{OUT}/{split}_x.npy", x); np.save(f"{OUT}/{split}_y.npy", y)
    np.save(f"{OUT}/{split}_frac.npy", frac); np.save(f"{OUT}/{split}_area.npy", areas)
    print(split, x.shape, "object-token rate", float((frac >= 0.1).mean()),
          f"{time.time()-t0:.0f}s", flush=True)
    if split == "train":  # background ids, same (unshuffled) order
        bg = [np.asarray(t[1]) for _, t in load_benchmark(
            split, 256, 64, with_background=True, shuffle=False)]
        bg = np.concatenate(bg); np.save(f"{OUT}/train_bg.npy", bg)
        print("train background == label:", float((bg == y).mean()), flush=True)
