"""The data layer: one setting for where data lives, a registry of every dataset the book uses,
and loaders that verify what they read.

The setting
-----------
``DGMBOOK_DATA`` names the data root. When it is set, the root is treated as **read-only**
(it may be a shared mirror such as ``../shared/data``): nothing is ever written there, and a
missing file raises :class:`DatasetNotFoundError` saying what to do. When it is unset, the root is
a per-user cache directory that the loaders own and download into from the official sources.

Every file has a sha256 sum in :data:`REGISTRY`; a file that does not match raises
:class:`ChecksumError`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import platformdirs

DATA_ENV = "DGMBOOK_DATA"


class DatasetNotFoundError(FileNotFoundError):
    """A registered data file is not under the data root (and could not be downloaded)."""


class ChecksumError(RuntimeError):
    """A data file exists but its sha256 sum differs from the registry's."""


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset: its path relative to the data root and its sha256 sum."""

    relpath: str
    sha256: str
    url: str | None = None  # where the official source serves it (None: fetched by a library)
    # Turns the downloaded bytes into the canonical file (e.g. rename fields, gunzip).
    convert: Callable[[bytes], bytes] | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    source: str  # where a person gets it, in words
    licence: str
    files: tuple[DataFile, ...] = field(default_factory=tuple)

    def file(self, relpath: str) -> DataFile:
        for f in self.files:
            if f.relpath == relpath or f.relpath.endswith("/" + relpath):
                return f
        known = ", ".join(f.relpath for f in self.files)
        raise KeyError(f"dataset {self.name!r} has no file {relpath!r}; it has: {known}")


def _dialogsum_convert(raw: bytes) -> bytes:
    """Upstream DialogSum calls the id ``fname``; the book's canonical files call it ``id``."""
    out = []
    for line in raw.decode("utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if "fname" in rec:
            rec = {"id": rec.pop("fname"), **rec}
        out.append(json.dumps(rec, ensure_ascii=False))
    return ("\n".join(out) + "\n").encode("utf-8")


_MNIST_SUMS = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_FASHION_SUMS = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
_DIALOGSUM_URL = "https://raw.githubusercontent.com/cylnlp/dialogsum/main/DialogSum_Data/dialogsum.{}.jsonl"

REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            "MNIST",
            "handwritten digits, 60,000 train / 10,000 test, 28x28 uint8 (LeCun, Cortes, Burges)",
            "downloaded by torchvision.datasets.MNIST(root, download=True)",
            "CC BY-SA 3.0",
            tuple(DataFile(f"MNIST/raw/{n}", s) for n, s in _MNIST_SUMS.items()),
        ),
        Dataset(
            "FashionMNIST",
            "Zalando's article images, 60,000 train / 10,000 test, 28x28 uint8",
            "downloaded by torchvision.datasets.FashionMNIST(root, download=True)",
            "MIT",
            tuple(DataFile(f"FashionMNIST/raw/{n}", s) for n, s in _FASHION_SUMS.items()),
        ),
        Dataset(
            "dialogsum",
            "DialogSum dialogues with human summaries: 12,460 train / 500 validation / 500 test "
            "(three references per test dialogue); fields id, dialogue, summary, topic",
            "https://github.com/cylnlp/dialogsum (DialogSum_Data/), Chen et al. 2021",
            "CC BY-NC-SA 4.0",
            (
                DataFile("dialogsum/train.jsonl",
                         "c1456f0770edbd2f8329d813c5a61ce074b12932226da559730426cb166911e5",
                         _DIALOGSUM_URL.format("train"), _dialogsum_convert),
                DataFile("dialogsum/validation.jsonl",
                         "abb9441eeb856168b904cb8d248ed8ae36da89a580c04512030939f5d24c68a2",
                         _DIALOGSUM_URL.format("dev"), _dialogsum_convert),
                DataFile("dialogsum/test.jsonl",
                         "f51cc9a8738ae290ad05744619885ee1f9f77507c86ec19f93f96e26d55e69ef",
                         _DIALOGSUM_URL.format("test"), _dialogsum_convert),
            ),
        ),
        Dataset(
            "xsum",
            "1,000 pairs (document, summary, id) from the official XSum test split, and the indices "
            "of the CS 182 homework's XSum subset",
            "https://github.com/EdinburghNLP/XSum (official split); the 1,000-pair sample as in "
            "github.com/DavidFanzz/llm_decoding data/xsum/test.jsonl",
            "research use (BBC articles)",
            (
                DataFile("xsum/test-1000.jsonl",
                         "d824400a3d422550d016e15599806196600932bc6109e00ab97be3044426c052",
                         "https://raw.githubusercontent.com/DavidFanzz/llm_decoding/main/data/xsum/test.jsonl"),
                DataFile("xsum/cs182-subset-indices.json",
                         "df667a37a5c90983f8691680726aa31aa8329004c1fb71914bafbcfcca9f2b0b"),
            ),
        ),
        Dataset(
            "bbc-news-summary",
            "2,225 BBC news articles (2004-05) with title and extractive summary",
            "Kaggle 'BBC News Summary' (Greene & Cunningham 2006); "
            "https://www.kaggle.com/datasets/pariza/bbc-news-summary",
            "research use",
            (
                DataFile("bbc-news-summary/bbc-news-summary.jsonl",
                         "2c65cb447c71705eff31a1720d02fbb19def69a5f15b36d669eea1d9fa4fa0fd"),
            ),
        ),
    ]
}


def data_root() -> Path:
    """The data root: ``$DGMBOOK_DATA`` if set (read-only), else the user cache directory."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_cache_dir("dgmbook")) / "data"


def root_is_read_only() -> bool:
    """A root named by the setting is never written to; the default cache root is ours."""
    return bool(os.environ.get(DATA_ENV))


def sha256sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# Verified files, keyed by (path, size, mtime): hashing 64 MB of MNIST once per process is enough.
_VERIFIED: set[tuple[str, int, int]] = set()


def verify(path: Path, expected: str, dataset: str) -> None:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    got = sha256sum(path)
    if got != expected:
        raise ChecksumError(
            f"dataset {dataset!r}: {path} has sha256 {got}, expected {expected}. The file is "
            f"corrupt or a different version; delete it and fetch it again "
            f"(see dgmbook.data.REGISTRY[{dataset!r}].source)."
        )
    _VERIFIED.add(key)


def _missing_message(ds: Dataset, f: DataFile, root: Path, why: str = "") -> str:
    where = (
        f"the data root {root} comes from ${DATA_ENV} and is read-only, so nothing is downloaded"
        if root_is_read_only()
        else f"the data root {root} is the default cache (${DATA_ENV} is unset)"
    )
    return (
        f"dataset {ds.name!r}: file {f.relpath!r} not found at {root / f.relpath}. "
        f"{where}{'; ' + why if why else ''}. Get it from: {ds.source}, and place it at that path, "
        f"or set ${DATA_ENV} to a folder that has it (in this project's CI: ../shared/data)."
    )


def _download(ds: Dataset, f: DataFile, dest: Path) -> None:
    if f.url is None:
        raise DatasetNotFoundError(_missing_message(ds, f, data_root(), "it has no download URL"))
    try:
        with urllib.request.urlopen(f.url, timeout=60) as r:
            raw = r.read()
    except OSError as e:  # no network, 404, ...
        raise DatasetNotFoundError(
            _missing_message(ds, f, data_root(), f"downloading {f.url} failed ({e})")
        ) from e
    payload = f.convert(raw) if f.convert else raw
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
        tmp.write(payload)
    os.replace(tmp.name, dest)


def dataset_file(name: str, relpath: str, download: bool = True) -> Path:
    """The verified path of one registered file, downloading it into the default cache root
    if it is missing there (never into a root named by ``$DGMBOOK_DATA``)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; registered: {', '.join(REGISTRY)}")
    ds = REGISTRY[name]
    f = ds.file(relpath)
    root = data_root()
    path = root / f.relpath
    if not path.exists():
        if root_is_read_only() or not download:
            raise DatasetNotFoundError(_missing_message(ds, f, root))
        _download(ds, f, path)
    verify(path, f.sha256, name)
    return path


def read_jsonl(name: str, relpath: str) -> list[dict]:
    """All records of a registered JSON-lines file."""
    path = dataset_file(name, relpath)
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def iter_jsonl(name: str, relpath: str) -> Iterator[dict]:
    path = dataset_file(name, relpath)
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


# --- image datasets -------------------------------------------------------------------------


def _idx_images(path: Path):
    import numpy as np
    import torch

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        buf = fh.read()
    magic, n, rows, cols = (int.from_bytes(buf[i:i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051:
        raise ChecksumError(f"{path} is not an IDX image file (magic {magic})")
    arr = np.frombuffer(buf, dtype=np.uint8, offset=16).reshape(n, rows, cols)
    return torch.from_numpy(arr.copy())


def _idx_labels(path: Path):
    import numpy as np
    import torch

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        buf = fh.read()
    magic = int.from_bytes(buf[:4], "big")
    if magic != 2049:
        raise ChecksumError(f"{path} is not an IDX label file (magic {magic})")
    return torch.from_numpy(np.frombuffer(buf, dtype=np.uint8, offset=8).astype(np.int64))


def load_image_dataset(name: str = "MNIST", train: bool = True):
    """``(images, labels)`` of MNIST or Fashion-MNIST as whole tensors:
    images ``uint8 [N, 28, 28]``, labels ``int64 [N]``.

    Reads the verified ``.gz`` IDX files directly (no per-image Python loop); when the default
    cache root lacks them, torchvision downloads them from the official mirrors.
    """
    if name not in ("MNIST", "FashionMNIST"):
        raise KeyError(f"{name!r} is not an image dataset; use 'MNIST' or 'FashionMNIST'")
    prefix = "train" if train else "t10k"
    img_rel, lab_rel = f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"
    root = data_root()
    if not (root / name / "raw" / img_rel).exists() and not root_is_read_only():
        import torchvision

        try:
            getattr(torchvision.datasets, name)(str(root), train=train, download=True)
        except Exception as e:  # torchvision raises a bare RuntimeError after its mirrors fail
            ds = REGISTRY[name]
            raise DatasetNotFoundError(_missing_message(
                ds, ds.file(img_rel), root, f"torchvision could not download it ({e})")) from e
    images = _idx_images(dataset_file(name, img_rel, download=False))
    labels = _idx_labels(dataset_file(name, lab_rel, download=False))
    return images, labels

