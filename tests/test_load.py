"""shmrt.load and model.save: native, .npz and .safetensors files, URLs, and the dispatch on source kinds."""
import functools
import hashlib
import http.server
import os
import threading
import zipfile

import numpy as np
import pytest

import shmrt
from models import rnd  # noqa: E402
from shmrt.ir import native


def models():
    shmrt.manual_seed(11)
    dense = shmrt.Sequential([
        shmrt.Standardize(mean=rnd(9, seed=1), std=np.abs(rnd(9, seed=2)) + 0.5), shmrt.Select([0, 2, 3, 5, 8, 7]),
        shmrt.MinMaxScale(min=-np.ones(6), max=np.arange(1, 7)), shmrt.Linear(6, 13, bias=False),
        shmrt.BatchNorm1d(13, eps=1e-3, running_mean=rnd(13, seed=3), running_var=np.abs(rnd(13, seed=4))),
        shmrt.GELU(approximate="tanh"), shmrt.Dropout(0.25), shmrt.LayerNorm(13, eps=1e-4, weight=rnd(13, seed=5)),
        shmrt.Tanh(), shmrt.Linear(13, 8), shmrt.Sigmoid(), shmrt.Select(slice(1, None, 2)), shmrt.LogSoftmax(),
        shmrt.TopK(3)])
    cnn = shmrt.Sequential([
        shmrt.Conv2d(4, 6, 3, stride=(2, 1), padding=1, dilation=(1, 2), groups=2), shmrt.BatchNorm2d(6),
        shmrt.ReLU(), shmrt.MaxPool2d(2, stride=1, padding=1, dilation=1),
        shmrt.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), shmrt.Conv2d(6, 5, 1, bias=False),
        shmrt.GlobalAvgPool(), shmrt.Flatten(), shmrt.Linear(5, 4), shmrt.Softmax(), shmrt.ArgMax()],
        input_shape=(4, 9, 11))
    rec = shmrt.Sequential([
        shmrt.RNN(3, 5, nonlinearity="relu"), shmrt.LSTM(5, 7, num_layers=2, h0=rnd(2, 7, seed=6), c0=rnd(2, 7)),
        shmrt.GRU(7, 4, bias=False, return_sequences=False), shmrt.Linear(4, 2)], input_shape=(6, 3))
    return {"dense": (dense, rnd(5, 9, seed=7)), "cnn": (cnn, rnd(3, 4, 9, 11, seed=8)),
            "recurrent": (rec, rnd(4, 6, 3, seed=9))}


def assert_same_model(a, b):
    assert native.architecture(a) == native.architecture(b)
    for la, lb in zip(a.layers, b.layers):
        assert type(la) is type(lb) and la.params.keys() == lb.params.keys()
        for k in la.params:
            assert lb.params[k].dtype == np.float32 and np.array_equal(la.params[k], lb.params[k]), (la, k)


def outputs(rt, model, x):
    with rt.compile(model, strategy="model", max_batch=8) as cm:
        return cm(x)


@pytest.mark.parametrize("suffix", [".shmrt", ".npz", ".safetensors", ""])
@pytest.mark.parametrize("name", ["dense", "cnn", "recurrent"])
def test_round_trip_is_bit_exact(rt, tmp_path, name, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    model, x = models()[name]
    path = tmp_path / f"model{suffix}"
    model.save(path)
    back = shmrt.load(path)
    assert_same_model(model, back)
    a, b = outputs(rt, model, x), outputs(rt, back, x)
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert u.dtype == v.dtype and np.array_equal(u, v)
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left behind


def test_native_file_holds_no_pickle(tmp_path):
    model, _ = models()["dense"]
    model.save(tmp_path / "m.shmrt")
    with zipfile.ZipFile(tmp_path / "m.shmrt") as z:
        for name in z.namelist():
            head = z.read(name)[:128]
            assert head.startswith(b"\x93NUMPY") and b"'O'" not in head and b"|O" not in head, name


def test_refuses_pickles_and_corrupt_files(tmp_path):
    np.savez(tmp_path / "pickled.npz", __shmrt__=np.frombuffer(b"{}", np.uint8),
             **{"0.weight": np.array([{"evil": 1}], dtype=object)})
    with pytest.raises(ValueError, match="pickled.npz"):
        shmrt.load(tmp_path / "pickled.npz")
    np.savez(tmp_path / "plain.npz", w=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="no shmrt architecture"):
        shmrt.load(tmp_path / "plain.npz")
    model, _ = models()["cnn"]
    model.save(tmp_path / "whole.shmrt")
    blob = (tmp_path / "whole.shmrt").read_bytes()
    for cut in (10, len(blob) // 2, len(blob) - 30):
        (tmp_path / "cut.shmrt").write_bytes(blob[:cut])
        with pytest.raises(ValueError, match="truncated or corrupt"):
            shmrt.load(tmp_path / "cut.shmrt")
    if pytest.importorskip("safetensors"):
        model.save(tmp_path / "whole.safetensors")
        blob = (tmp_path / "whole.safetensors").read_bytes()
        (tmp_path / "cut.safetensors").write_bytes(blob[: len(blob) - 17])
        with pytest.raises(ValueError, match="truncated or corrupt"):
            shmrt.load(tmp_path / "cut.safetensors")


def test_refuses_unknown_layer_classes_and_bad_records(tmp_path):
    model, _ = models()["dense"]
    arch = native.architecture(model)
    arch["layers"][0]["class"] = "os.system"
    with pytest.raises(ValueError, match="unknown class 'os.system'; expected one of"):
        native.build(arch, native.tensors(model), "record")
    arch = native.architecture(model)
    with pytest.raises(ValueError, match=r"parameter '3.weight' of layer 3 \(Linear\) is missing"):
        native.build(arch, {k: v for k, v in native.tensors(model).items() if k != "3.weight"}, "record")
    bad = dict(native.tensors(model), **{"3.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match=r"layer 3 \(Linear\).*shape \(13, 6\)"):
        native.build(arch, bad, "record")


def test_dispatch_errors(tmp_path):
    with pytest.raises(TypeError, match="cannot load a builtins.int; expected a path"):
        shmrt.load(42)
    with pytest.raises(FileNotFoundError, match="no such model file"):
        shmrt.load(tmp_path / "missing.onnx")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="cannot tell the format"):
        shmrt.load(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="unsupported URL scheme 'ftp'"):
        shmrt.load("ftp://example.org/m.onnx")
    model, _ = models()["dense"]
    assert shmrt.load(model) is model
    with pytest.raises(TypeError, match="takes no options"):
        shmrt.load(model, sha256="0" * 64)


# -- URLs ----------------------------------------------------------------------------

class _Server:
    """A static file server on 127.0.0.1 that counts its requests."""

    def __init__(self, folder):
        self.hits = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                server.hits.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=folder))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    model, x = models()["dense"]
    model.save(site / "dense.shmrt")
    digest = hashlib.sha256((site / "dense.shmrt").read_bytes()).hexdigest()
    srv = _Server(str(site))
    yield srv, model, digest, tmp_path / "cache"
    srv.close()


def test_url_with_the_right_sha256_loads_and_is_cached(served, capsys):
    srv, model, digest, cache = served
    back = shmrt.load(f"{srv.url}/dense.shmrt", sha256=digest, cache_dir=cache)
    assert_same_model(model, back)
    assert "dense.shmrt" in capsys.readouterr().err  # progress was shown
    again = shmrt.load(f"{srv.url}/dense.shmrt", sha256=digest.upper(), cache_dir=cache, progress=False)
    assert_same_model(model, again)
    assert srv.hits == ["/dense.shmrt"]  # the second load came from the cache
    assert len(os.listdir(cache)) == 1


def test_url_with_a_wrong_sha256_raises_and_caches_nothing(served):
    srv, model, digest, cache = served
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    with pytest.raises(ValueError, match=f"sha256 mismatch: expected {wrong}, got {digest}"):
        shmrt.load(f"{srv.url}/dense.shmrt", sha256=wrong, cache_dir=cache, progress=False)
    assert os.listdir(cache) == []
    with pytest.raises(OSError, match="cannot download"):
        shmrt.load(f"{srv.url}/missing.shmrt", cache_dir=cache, progress=False)
    assert os.listdir(cache) == []
    with pytest.raises(ValueError, match="sha256 must be 64 hex digits"):
        shmrt.load(f"{srv.url}/dense.shmrt", sha256="abc", cache_dir=cache)
    assert srv.hits == ["/missing.shmrt"] or srv.hits == ["/dense.shmrt", "/missing.shmrt"]


def test_file_url_and_local_sha256(served, tmp_path):
    srv, model, digest, cache = served
    path = tmp_path / "site" / "dense.shmrt"
    assert_same_model(model, shmrt.load(path.as_uri(), cache_dir=cache, progress=False))
    assert not os.path.exists(cache) or os.listdir(cache) == []  # read in place, not cached
    other, _ = models()["cnn"]
    other.save(path)  # the file changes: a file: URL sees the change
    assert_same_model(other, shmrt.load(path.as_uri(), cache_dir=cache))
    model.save(path)
    assert_same_model(model, shmrt.load(path, sha256=digest))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        shmrt.load(path, sha256="f" * 64)
    with pytest.raises(ValueError, match="names host 'example.org'"):
        shmrt.load("file://example.org/m.shmrt")


def test_refresh_downloads_a_changed_url_again(served, tmp_path):
    srv, model, digest, cache = served
    url = f"{srv.url}/dense.shmrt"
    assert_same_model(model, shmrt.load(url, cache_dir=cache, progress=False))
    other, _ = models()["recurrent"]
    other.save(tmp_path / "site" / "dense.shmrt")
    assert_same_model(model, shmrt.load(url, cache_dir=cache, progress=False))  # unpinned: the cached copy
    assert_same_model(other, shmrt.load(url, cache_dir=cache, progress=False, refresh=True))
    assert len(srv.hits) == 2 and len(os.listdir(cache)) == 1


def test_save_names_and_options(tmp_path):
    model, _ = models()["dense"]
    with pytest.raises(ValueError, match="not ONNX"):
        model.save(tmp_path / "m.onnx")
    if pytest.importorskip("safetensors"):
        model.save(tmp_path / "M.SAFETENSORS")  # the suffix in any case
        assert_same_model(model, shmrt.load(tmp_path / "M.SAFETENSORS"))
    with pytest.raises(TypeError, match=r"unexpected option\(s\) \['input_shape'\] for a path or URL; expected"):
        shmrt.load(tmp_path / "M.SAFETENSORS", input_shape=(2,))
