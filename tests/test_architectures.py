"""Real architectures (tests/archs.py: ResNet-18, ResNet-50, MobileNetV2, a DenseNet block, an
Inception block, a small U-Net) loaded the way users have them -- from the live module (torch.fx traces its own
forward, residuals and branches included) and from its torch.onnx.export file -- and run with
every strategy on 1-3 workers at several batch sizes, against the module itself in float64.

Sizes are cut down (width, input size) so that the suite stays quick on 2 cores; the bench runs
the full-size ResNet-18 and MobileNetV2 at 224x224."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import archs  # noqa: E402

import shmrt  # noqa: E402

STRATEGIES = ("data", "model", "hybrid", "pipeline")

NETS = {
    "resnet18": (lambda: archs.resnet18(num_classes=10, width=8), (3, 32, 32)),
    "resnet50": (lambda: archs.resnet50(num_classes=10, width=4), (3, 32, 32)),
    "mobilenetv2": (lambda: archs.mobilenetv2(num_classes=10, width_mult=0.25), (3, 32, 32)),
    "densenet_block": (lambda: archs.densenet_block(), (3, 12, 12)),
    "inception_block": (lambda: archs.inception_block(), (3, 12, 12)),
    "unet": (lambda: archs.unet(), (3, 16, 16)),
}
ROUTES = {}  # name -> the routes it loads by, where not both

def _reference(module, x):
    m = copy.deepcopy(module).double().eval()
    with torch.no_grad():
        return m(torch.from_numpy(x.astype(np.float64))).numpy()


def _onnx(module, shape, path):
    torch.onnx.export(module, (torch.zeros((1, *shape)),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    return path


@pytest.mark.parametrize("name, route", [(n, r) for n in NETS for r in ROUTES.get(n, ("module", "onnx"))])
def test_architecture(name, route, tmp_path):
    make, shape = NETS[name]
    module = make()
    x = np.random.default_rng(0).standard_normal((5, *shape)).astype(np.float32)
    ref = _reference(module, x)
    model = (shmrt.load(module, input_shape=shape) if route == "module"
             else shmrt.load(_onnx(module, shape, tmp_path / f"{name}.onnx")))
    worst = 0.0
    for workers in (1, 2, 3):
        with shmrt.Runtime(workers=workers) as rt:
            for s in STRATEGIES if workers > 1 else ("data",):
                cm = rt.compile(model, strategy=s, max_batch=4)
                for n in (1, 2, 5):  # 5: chunked over max_batch
                    got = cm(x[:n])
                    err = float(np.abs(got - ref[:n]).max() / np.abs(ref[:n]).max())
                    assert err <= 1e-4, (name, route, workers, s, n, err)
                    worst = max(worst, err)
    print(f"\n{name} from the {route}: worst relative error {worst:.2e} over 1-3 workers, {len(STRATEGIES)} "
          f"strategies, batch 1, 2, 5")
