"""shmrt.load: one entry point from whatever the user has to a shmrt.Sequential (or a shmrt.Graph,
for a model with branches).

Sources: a path (native / .npz, .safetensors, .onnx) or a URL (http, https,
file: downloaded into a cache, with progress and an optional sha256 pin),
an ``onnx.ModelProto``, a torch ``nn.Module``, a fitted scikit-learn
estimator, or a shmrt model.  Each kind has its own module; this one only
decides which, and fetches URLs.
"""
from __future__ import annotations

import hashlib
import os
import sys
import urllib.parse
import urllib.request

from shmrt.ir import layers as L
from shmrt.ir import native

_URL_SCHEMES = ("http", "https", "file")
_SUFFIXES = (".onnx", ".safetensors", ".npz", ".shmrt")
SOURCES = ("a path (.onnx, .safetensors, .npz or a native file from model.save) or an http/https/file URL, "
           "an onnx.ModelProto, a torch nn.Module, a fitted scikit-learn estimator or Pipeline, "
           "or a shmrt.Sequential or shmrt.Graph")


def load(source, **options) -> L.Sequential:
    """The model in ``source`` as a ``shmrt.Sequential`` (a chain of layers) or a ``shmrt.Graph``
    (residuals, branches).

    options:
      sha256=    (paths and URLs) the file's expected SHA-256, hex; a mismatch raises and caches nothing
      cache_dir= (http/https URLs) where downloads are kept (default ``$SHMRT_CACHE`` or
                 ``~/.cache/shmrt/models``); a file: URL is read in place
      progress=  (URLs) show download progress on stderr (default True)
      refresh=   (URLs) download again even if the cache holds the URL (default False)
      input_shape= (torch modules) the per-sample input shape when the first layer does not fix it
      max_seq_len= (Hugging Face text models, ONNX transformer encoders) the length T of input_ids /
                 attention_mask (default config.max_position_embeddings; ONNX: a fixed T of the inputs,
                 else the rows of the position embeddings, else 512)
    """
    mod = type(source).__module__ or ""
    if isinstance(source, (L.Sequential, L.Graph)):
        _no_options(options, f"a shmrt.{type(source).__name__}")
        return source
    if isinstance(source, L.Layer):
        _no_options(options, "a shmrt layer")
        return L.Sequential([source])
    if isinstance(source, (str, os.PathLike)):
        return _load_path(source, **options)
    if mod.startswith("onnx") and type(source).__name__ == "ModelProto":
        _no_options({k: v for k, v in options.items() if k != "max_seq_len"}, "an onnx.ModelProto (but max_seq_len)")
        from shmrt.frontends.onnx import from_onnx
        return from_onnx(source, max_seq_len=options.get("max_seq_len"))
    if _is_torch_module(source):
        from shmrt.frontends.torch import from_torch
        return from_torch(source, **options)
    if mod.startswith("sklearn") or (hasattr(source, "get_params") and hasattr(source, "fit")):
        _no_options(options, "a scikit-learn estimator")
        from shmrt.frontends.sklearn_import import from_sklearn
        return from_sklearn(source)
    raise TypeError(f"shmrt.load: cannot load a {type(source).__module__}.{type(source).__name__}; "
                    f"expected {SOURCES}")


def _no_options(options, what):
    if options:
        raise TypeError(f"shmrt.load: {what} takes no options, got {sorted(options)}")


def _is_torch_module(obj) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


_PATH_OPTIONS = ("sha256", "cache_dir", "progress", "refresh", "max_seq_len")


def _load_path(source, **options):
    unknown = sorted(set(options) - set(_PATH_OPTIONS))
    if unknown:
        raise TypeError(f"shmrt.load: unexpected option(s) {unknown} for a path or URL; expected some of "
                        f"{', '.join(_PATH_OPTIONS)}")
    sha256 = options.get("sha256")
    text = os.fspath(source)
    scheme = urllib.parse.urlsplit(text).scheme if isinstance(text, str) else ""
    if scheme == "file":  # a local file: read in place, never copied into the cache (it could go stale)
        parts = urllib.parse.urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"shmrt.load: file URL {text!r} names host {parts.netloc!r}; expected a local file "
                             f"(file:///path)")
        return _load_path(urllib.request.url2pathname(parts.path), sha256=sha256,
                          **{k: v for k, v in options.items() if k == "max_seq_len"})
    seq = {k: options.pop(k) for k in list(options) if k == "max_seq_len"}
    if scheme in _URL_SCHEMES:
        path = fetch(text, **options)
    elif "://" in str(text):
        raise ValueError(f"shmrt.load: unsupported URL scheme {scheme!r} in {text!r}; expected one of "
                         f"{', '.join(_URL_SCHEMES)}")
    else:
        path = text
        if not os.path.isfile(path):
            raise FileNotFoundError(f"shmrt.load: no such model file: {path!r}")
        if sha256 is not None:
            _check_digest(path, _file_digest(path), sha256)
    return load_file(path, **seq)


def load_file(path, max_seq_len=None) -> L.Sequential:
    """A local model file, by its suffix, else by its first bytes."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(9)  # a zip's "PK", or safetensors' 8-byte header length and its JSON's "{"
    lower = path.lower()
    if lower.endswith(".onnx"):
        from shmrt.frontends.onnx import load_onnx_file
        return load_onnx_file(path, max_seq_len=max_seq_len)
    if max_seq_len is not None:
        raise TypeError(f"shmrt.load: max_seq_len applies to ONNX transformer encoders, not to {path!r}")
    if lower.endswith(".safetensors"):
        return native.load_safetensors(path)
    if lower.endswith((".npz", ".shmrt")) or head.startswith(b"PK"):
        return native.load_npz(path)
    if len(head) == 9 and int.from_bytes(head[:8], "little") < os.path.getsize(path) and head[8:] == b"{":
        return native.load_safetensors(path)
    raise ValueError(f"shmrt.load: cannot tell the format of {path!r}; expected a name ending in "
                     f"{', '.join(_SUFFIXES)} or a native file written by model.save")


# -- URLs ---------------------------------------------------------------------------

def default_cache_dir() -> str:
    return os.environ.get("SHMRT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "shmrt", "models")


def _cache_name(url) -> str:
    """A file name per URL: a hash of the URL, then its basename (which keeps the suffix)."""
    base = os.path.basename(urllib.parse.urlsplit(url).path) or "model"
    base = "".join(c if c.isalnum() or c in "._-" else "_" for c in base)
    return hashlib.sha256(url.encode()).hexdigest()[:16] + "-" + base


def _file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_pin(want):
    if not isinstance(want, str) or len(want) != 64 or any(c not in "0123456789abcdefABCDEF" for c in want):
        raise ValueError(f"sha256 must be 64 hex digits, got {want!r}")


def _check_digest(where, got, want):
    _check_pin(want)
    if got != want.lower():
        raise ValueError(f"{where}: sha256 mismatch: expected {want.lower()}, got {got}")


def fetch(url, sha256=None, cache_dir=None, progress=True, refresh=False, timeout=60.0) -> str:
    """Download ``url`` into the cache (once) and return the local path.

    The download goes to a temporary file in the cache folder and is renamed
    into place only once complete and (with ``sha256``) verified: a failed or
    rejected download leaves nothing in the cache.  A cached file is reused,
    after checking it against ``sha256`` when one is given; without a pin, a
    URL whose content changes keeps its first download until ``refresh=True``
    (only ``sha256=`` guarantees which file you run)."""
    if sha256 is not None:
        _check_pin(sha256)  # before any download
    folder = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
    os.makedirs(folder, exist_ok=True)
    final = os.path.join(folder, _cache_name(url))
    if os.path.isfile(final) and not refresh:
        if sha256 is None or _file_digest(final) == sha256.lower():
            return final
        os.unlink(final)  # a stale or damaged cache entry: fetch again
    try:
        resp = urllib.request.urlopen(url, timeout=timeout)
    except Exception as e:
        raise OSError(f"shmrt.load: cannot download {url}: {e}") from None

    def download(out):  # streamed into a temporary file, renamed into the cache only if this returns
        h = hashlib.sha256()
        total = int(resp.headers.get("Content-Length") or 0)
        bar = _Progress(url, total) if progress else None
        done = 0
        while True:
            block = resp.read(1 << 20)
            if not block:
                break
            out.write(block)
            h.update(block)
            done += len(block)
            if bar:
                bar.update(len(block))
        if bar:
            bar.close()
        if total and done != total:
            raise OSError(f"shmrt.load: download of {url} ended early: {done} of {total} bytes")
        if sha256 is not None:
            _check_digest(url, h.hexdigest(), sha256)

    with resp:
        native.atomic_write(final, download)
    return final


class _Progress:
    """tqdm when it is installed, else a line on stderr every 10 %."""

    def __init__(self, url, total):
        self.total, self.done, self.shown = total, 0, -1
        self.name = os.path.basename(urllib.parse.urlsplit(url).path) or url
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=f"downloading {self.name}",
                            file=sys.stderr, leave=False)
        except ImportError:
            self.bar = None

    def update(self, n):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.total:
            tenth = 10 * self.done // self.total
            if tenth != self.shown:
                self.shown = tenth
                print(f"downloading {self.name}: {10 * tenth} % of {self.total / 1e6:.1f} MB", file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        else:
            print(f"downloaded {self.name}: {self.done / 1e6:.1f} MB", file=sys.stderr)
