"""Depthwise convolutions (groups = channels) on both of the kernel's paths -- phase planes for images
with more than HWC_MAX_PIXELS output pixels, channels-last below -- and the stride-2 phase split
(vector shuffles), against torch's F.conv2d in float64: strides 1-3, padding (ONNX-style asymmetric
too, through the ONNX importer's pads), dilation, odd and even widths, each fused activation that
has a float32 loop, every strategy on 1-2 workers at batch 1 and 3 (so channel ranges and output-row
ranges of a worker both reach the kernel)."""
from __future__ import annotations

import numpy as np
import pytest

import shmrt
from shmrt.kernels.conv import HWC_MAX_PIXELS

torch = pytest.importorskip("torch")
F = torch.nn.functional

STRATEGIES = ("data", "model", "hybrid", "auto")

# (channels, H, W, kernel, stride, padding, dilation); the comment: the path taken
CASES = {
    "hwc_7x7_s1": (24, 7, 7, 3, 1, 1, 1),  # channels-last
    "hwc_14x14_s2": (16, 14, 14, 3, 2, 1, 1),  # channels-last, 7 x 7 out
    "hwc_odd_s2_k5": (10, 13, 11, 5, 2, 2, 1),
    "hwc_dilated": (12, 9, 10, 3, 1, 2, 2),
    "hwc_s3_nopad": (5, 10, 9, 3, 3, 0, 1),
    "planes_s1": (6, 20, 19, 3, 1, 1, 1),  # 20 x 19 out: phase planes
    "planes_s2_even": (7, 32, 30, 3, 2, 1, 1),  # stride-2 split, even width
    "planes_s2_odd": (5, 33, 31, 3, 2, 1, 1),  # odd width: the last column alone
    "planes_s2_pad0": (4, 34, 35, 3, 2, 0, 1),  # pad 0: even columns to plane 0
    "planes_s2_pad2_k5": (3, 35, 33, 5, 2, 2, 1),  # pad 2
    "planes_s2_dilated": (4, 31, 36, 3, 2, 1, 2),
}
ACTS = {"relu6": (shmrt.ReLU6, lambda t: t.clamp(0, 6)), "hardswish": (shmrt.Hardswish, F.hardswish),
        "none": (None, lambda t: t)}


def _model_and_reference(case, act, seed=0):
    C, H, W, k, s, p, d = CASES[case]
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((C, 1, k, k)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    layers = [shmrt.Conv2d(C, C, k, stride=s, padding=p, dilation=d, groups=C, weight=w, bias=b)]
    make, torch_act = ACTS[act]
    if make is not None:
        layers.append(make())

    def reference(x):
        y = F.conv2d(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w.astype(np.float64)),
                     torch.from_numpy(b.astype(np.float64)), stride=s, padding=p, dilation=d, groups=C)
        return torch_act(y).numpy()

    return shmrt.Sequential(layers), reference, (C, H, W)


def test_the_cases_cover_both_paths():
    outs = []
    for C, H, W, k, s, p, d in CASES.values():
        outs.append(((H + 2 * p - d * (k - 1) - 1) // s + 1) * ((W + 2 * p - d * (k - 1) - 1) // s + 1))
    assert min(outs) <= HWC_MAX_PIXELS < max(outs)


@pytest.mark.parametrize("workers", (1, 2))
@pytest.mark.parametrize("case", sorted(CASES))
def test_depthwise_matches_float64_torch(case, workers):
    worst = 0.0
    with shmrt.Runtime(workers=workers) as rt:
        for act in ACTS:
            model, reference, shape = _model_and_reference(case, act)
            x = np.random.default_rng(1).standard_normal((3,) + shape).astype(np.float32) * 2
            ref = reference(x)
            for strategy in STRATEGIES:
                cm = rt.compile(model, strategy=strategy, max_batch=3, input_shape=shape)
                for n in (1, 3):
                    y = cm(x[:n])
                    assert y.shape == ref[:n].shape
                    err = np.abs(y - ref[:n]).max() / np.abs(ref[:n]).max()
                    assert err < 1e-5, (case, act, strategy, n, err)
                    worst = max(worst, err)
    print(f"{case} workers={workers}: worst relative error {worst:.2e}")


def test_nan_propagates_on_both_paths():
    with shmrt.Runtime(workers=1) as rt:
        for case in ("hwc_7x7_s1", "planes_s2_odd"):
            model, reference, shape = _model_and_reference(case, "relu6")
            x = np.random.default_rng(2).standard_normal((1,) + shape).astype(np.float32)
            x[0, 1, 3, 4] = np.nan
            y = rt.compile(model, max_batch=1, input_shape=shape)(x)
            ref = reference(x)
            assert np.array_equal(np.isnan(y), np.isnan(ref)), case
            assert np.isnan(y).any()


def test_missing_input_shape_names_the_image_shape():
    model, _, _ = _model_and_reference("hwc_7x7_s1", "none")
    with shmrt.Runtime(workers=1) as rt:
        with pytest.raises(ValueError, match=r"input_shape=\(24, H, W\) for images of H x W"):
            rt.compile(model)


@pytest.mark.parametrize("case", sorted(CASES))
def test_output_row_ranges_match_the_whole_image(case):
    """The kernel given a worker's output-row range (spatial split at batch 1) computes exactly those
    rows: three ranges together equal one call over the image, with the scratch poisoned by NaN
    before each (nothing may be read that the range did not write)."""
    from shmrt.kernels.activations import RELU6
    from shmrt.kernels.conv import conv2d, scratch_floats
    C, H, W, k, s, p, d = CASES[case]
    OH, OW = (H + 2 * p - d * (k - 1) - 1) // s + 1, (W + 2 * p - d * (k - 1) - 1) // s + 1
    g = np.array([C, H, W, k, k, s, s, p, p, d, d, C, OH, OW], np.int64)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(C * H * W).astype(np.float32)
    w = rng.standard_normal((C, k * k)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    scratch = np.empty(scratch_floats(g, C), np.float32)
    whole = np.empty(C * OH * OW, np.float32)
    conv2d(x, w, b, whole, g, 0, C, 0, OH, scratch, RELU6, False)
    parts = np.full(C * OH * OW, np.nan, np.float32)
    for a, z in ((0, OH // 2), (OH // 2, OH - 1), (OH - 1, OH)):
        scratch[:] = np.nan
        conv2d(x, w, b, parts, g, 0, C, a, z, scratch, RELU6, False)
    assert np.array_equal(whole, parts)
