"""Upsample / ONNX Resize in every form shmrt takes: nearest (four roundings) and linear, each coordinate
transform, integer and fractional scales (downsampling too) and sizes; against the ONNX reference
(onnx.reference, the spec's own implementation) and torch's F.interpolate in float64."""
import numpy as np
import pytest

import shmrt

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

X = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)


def _resize(mode, ctm, nearest, scales=None, sizes=None):
    inits = [numpy_helper.from_array(np.array([], np.float32), "roi"),
             numpy_helper.from_array(np.array(scales if scales is not None else [], np.float32), "scales")]
    ins = ["x", "roi", "scales"]
    if sizes is not None:
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        ins.append("sizes")
    kw = dict(mode=mode, coordinate_transformation_mode=ctm, **({"nearest_mode": nearest} if nearest else {}))
    g = helper.make_graph([helper.make_node("Resize", ins, ["y"], **kw)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])


@pytest.fixture(scope="module")
def rt():
    with shmrt.Runtime(workers=2) as r:
        yield r


CASES = [(mode, ctm, nm) for mode in ("nearest", "linear") for ctm in shmrt.Upsample.CTMS
         for nm in (("floor", "ceil", "round_prefer_floor", "round_prefer_ceil") if mode == "nearest" else (None,))]


@pytest.mark.parametrize("mode, ctm, nearest", CASES, ids=lambda v: str(v))
def test_onnx_resize_forms(rt, mode, ctm, nearest):
    worst = 0.0
    for scales, sizes in (([1, 1, 2, 3], None), ([1, 1, 0.6, 1.7], None), (None, [2, 3, 7, 3]),
                          (None, [2, 3, 1, 1])):
        p = _resize(mode, ctm, nearest, scales, sizes)
        ref = ReferenceEvaluator(p).run(None, {"x": X})[0]
        model = shmrt.load(p)
        for st in ("data", "model"):
            got = rt.compile(model, strategy=st, max_batch=2)(X)
            assert got.shape == ref.shape
            err = float(np.abs(got - ref).max() / np.abs(ref).max())
            assert err <= 1e-5, (scales, sizes, st, err)
            worst = max(worst, err)
    print(f"Resize {mode} {ctm} {nearest}: worst relative error {worst:.1e}")


@pytest.mark.parametrize("mode, align", [("nearest", None), ("bilinear", False), ("bilinear", True)])
@pytest.mark.parametrize("scale", [2, 1.5, 0.7, (2, 0.5)])
def test_torch_interpolate_fractional_scales(rt, mode, align, scale):
    class M(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.interpolate(x, scale_factor=scale, mode=mode, align_corners=align)

    model = shmrt.load(M(), input_shape=(3, 4, 5))
    with torch.no_grad():
        ref = M()(torch.from_numpy(X.astype(np.float64))).numpy()
    got = rt.compile(model, max_batch=2)(X)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_refusals():
    with pytest.raises(ValueError, match="nearest_mode"):
        shmrt.Upsample(scale_factor=2, mode="bilinear", nearest_mode="floor")
    with pytest.raises(ValueError, match="coordinate_transformation_mode must be one of"):
        shmrt.Upsample(scale_factor=2, coordinate_transformation_mode="tf_crop_and_resize")
    with pytest.raises(ValueError, match="positive number"):
        shmrt.Upsample(scale_factor=-1.0)
    with pytest.raises(ValueError, match="cubic"):
        shmrt.load(_resize("cubic", "half_pixel", None, [1, 1, 2, 2]))
