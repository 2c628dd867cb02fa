"""Where the convolution time goes, layer by layer: python bench/conv_kernel.py [--model mobilenetv2|resnet18]

One thread, batch 1: every distinct convolution of the model (with its count
in the model) timed as shmrt's kernel (kernels/conv.py conv2d, the whole
output, its fused activation) against onnxruntime running a one-node graph of
the same Conv (+ Relu / Clip, which ORT fuses) at one thread.  Each round
runs the two in a random order; medians over the rounds, and the spread
(p10-p90).  The outputs are checked against each other first.  The table is
the per-op profile behind the graph benchmarks' gap to ORT: which layers
lose, by how much, and their share of the model's total.
"""
import argparse
import random
import time

import numpy as np

from shmrt.kernels.activations import RELU, RELU6, IDENTITY
from shmrt.kernels.conv import conv2d, scratch_floats


def mobilenetv2_convs():
    """(cin, cout, k, stride, pad, groups, H, act) for each conv of MobileNetV2 1.0 at 224."""
    convs = [(3, 32, 3, 2, 1, 1, 224, RELU6)]
    cin, H = 32, 112
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for i in range(n):
            st = s if i == 0 else 1
            hid = cin * t
            if t != 1:
                convs.append((cin, hid, 1, 1, 0, 1, H, RELU6))
            convs.append((hid, hid, 3, st, 1, hid, H, RELU6))
            H //= st
            convs.append((hid, c, 1, 1, 0, 1, H, IDENTITY))
            cin = c
    convs.append((320, 1280, 1, 1, 0, 1, 7, RELU6))
    return convs


def resnet18_convs():
    convs = [(3, 64, 7, 2, 3, 1, 224, RELU)]
    cin, H = 64, 56
    for c, s in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for i in range(2):
            st = s if i == 0 else 1
            convs.append((cin, c, 3, st, 1, 1, H, RELU))
            if st != 1 or cin != c:
                convs.append((cin, c, 1, st, 0, 1, H, IDENTITY))
            H //= st
            convs.append((c, c, 3, 1, 1, 1, H, IDENTITY))
            cin = c
    return convs


def ort_session(cin, cout, k, s, p, g, H, act, w, b):
    import onnx
    from onnx import helper, TensorProto, numpy_helper
    import onnxruntime as ort
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y" if act == IDENTITY else "c"], kernel_shape=[k, k],
                              strides=[s, s], pads=[p] * 4, group=g)]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    if act == RELU:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    elif act == RELU6:
        inits += [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    OH = (H + 2 * p - k) // s + 1
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, H, H])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, OH, OH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenetv2", choices=("mobilenetv2", "resnet18"))
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    convs = {"mobilenetv2": mobilenetv2_convs, "resnet18": resnet18_convs}[args.model]()
    counts = {}
    for c in convs:
        counts[c] = counts.get(c, 0) + 1
    rng = np.random.default_rng(0)
    rows, tot_s, tot_o = [], 0.0, 0.0
    print(f"{args.model}: {len(convs)} convolutions, {len(counts)} distinct; batch 1, one thread; "
          f"medians of {args.rounds} rounds in random order [p10-p90]")
    print(f"{'cin':>5}{'cout':>6}{'k':>3}{'s':>3}{'g':>5}{'H':>5}{'n':>3}{'MFLOP':>8}{'shmrt us':>22}"
          f"{'ORT us':>22}{'ORT/shmrt':>10}{'GFLOP/s':>9}")
    for (cin, cout, k, s, p, g, H, act), n in counts.items():
        OH = (H + 2 * p - k) // s + 1
        x = rng.standard_normal((cin, H, H)).astype(np.float32)
        w = (rng.standard_normal((cout, cin // g, k, k)) / np.sqrt(cin // g * k * k)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32) * 0.1
        geo = np.array([cin, H, H, k, k, s, s, p, p, 1, 1, g, OH, OH], np.int64)
        scratch = np.empty(scratch_floats(geo, cout), np.float32)
        out = np.empty(cout * OH * OH, np.float32)
        wmat = np.ascontiguousarray(w.reshape(cout, -1))
        xf = x.reshape(-1)
        sess = ort_session(cin, cout, k, s, p, g, H, act, w, b)
        feed = {"x": x[None]}

        def run_shmrt():
            conv2d(xf, wmat, b, out, geo, 0, cout, 0, OH, scratch, act, False)

        def run_ort():
            return sess.run(None, feed)[0]

        run_shmrt()
        ref = run_ort()
        err = np.abs(out - ref.reshape(-1)).max() / max(np.abs(ref).max(), 1e-30)
        assert err < 1e-4, (cin, cout, k, s, g, H, err)
        ts = {"s": [], "o": []}
        for _ in range(args.rounds):
            pair = [("s", run_shmrt), ("o", run_ort)]
            random.shuffle(pair)
            for key, fn in pair:
                t0 = time.perf_counter()
                fn()
                ts[key].append(time.perf_counter() - t0)
        s_us, o_us = (np.array(ts[key]) * 1e6 for key in "so")
        flops = 2 * cout * OH * OH * (cin // g) * k * k
        ms, mo = np.median(s_us), np.median(o_us)
        tot_s += n * ms
        tot_o += n * mo
        print(f"{cin:>5}{cout:>6}{k:>3}{s:>3}{g:>5}{H:>5}{n:>3}{flops / 1e6:>8.1f}"
              f"{ms:>9.1f} [{np.percentile(s_us, 10):>5.0f}-{np.percentile(s_us, 90):>5.0f}]"
              f"{mo:>9.1f} [{np.percentile(o_us, 10):>5.0f}-{np.percentile(o_us, 90):>5.0f}]"
              f"{mo / ms:>9.2f}x{flops / ms / 1e3:>9.1f}")
    print(f"all convolutions (count-weighted sum of medians): shmrt {tot_s / 1e3:.2f} ms, ORT {tot_o / 1e3:.2f} ms, "
          f"ORT/shmrt {tot_o / tot_s:.2f}x")


if __name__ == "__main__":
    main()
