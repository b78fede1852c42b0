"""Larq Compute Engine measured the way benchmarks/peers.py measures tbnn (optional, not in
CI): VGG-Small at CIFAR-10 size built with larq (binary convolutions 2..6, full-precision
first conv and classifier, BatchNorm as in tbnn's bn_conv order), converted with LCE, run
by its interpreter with LCE's fastest settings on x86 (indirect BGEMM, XNNPack).

Its own virtual environment (TensorFlow and torch do not share one here):

    python -m venv .lce && .lce/bin/pip install "tensorflow==2.16.2" "tf-keras==2.16.0" \\
        "larq==0.14.0" "larq-compute-engine==0.16.0" "numpy<2"
    TF_USE_LEGACY_KERAS=1 .lce/bin/python benchmarks/lce_peer.py [--threads 2] [--json OUT]

Batch-1 latency back-to-back and cold (after a 50 ms pause), median and p90; images/s over
64 images (the converted model takes one image per call).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def vgg_small():
    import larq as lq
    import tensorflow as tf

    kw = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
              use_bias=False, padding="same")
    layers = [tf.keras.layers.Conv2D(128, 3, padding="same", use_bias=False, input_shape=(32, 32, 3))]
    for i, ch in enumerate((128, 256, 256, 512, 512), start=1):
        layers += [tf.keras.layers.BatchNormalization(), lq.layers.QuantConv2D(ch, 3, **kw)]
        if i % 2 == 1:
            layers.append(tf.keras.layers.MaxPool2D(2))
    layers += [tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)]
    return tf.keras.Sequential(layers)


def main():
    import numpy as np
    from larq_compute_engine import convert_keras_model
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    interp = Interpreter(convert_keras_model(vgg_small()), num_threads=args.threads, use_reference_bconv=False,
                         use_indirect_bgemm=True, use_xnnpack=True)
    one, batch = np.random.rand(1, 32, 32, 3).astype(np.float32), np.random.rand(64, 32, 32, 3).astype(np.float32)

    def timed(x, pause=0.0):
        if pause:
            time.sleep(pause)
        t0 = time.perf_counter()
        interp.predict(x, verbose=0)
        return time.perf_counter() - t0

    for _ in range(10):
        timed(one)
    b2b = [timed(one) for _ in range(args.rounds)]
    cold = [timed(one, 0.05) for _ in range(max(20, args.rounds // 4))]
    big = [timed(batch) for _ in range(max(5, args.rounds // 20))]
    def stats(xs):
        return {"median_ms": 1e3 * statistics.median(xs), "p90_ms": 1e3 * statistics.quantiles(xs, n=10)[-1]}

    res = {"threads": args.threads, "batch1_back_to_back": stats(b2b), "batch1_cold": stats(cold),
           "batch64": {"images_per_s": 64 / statistics.median(big)}}
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
