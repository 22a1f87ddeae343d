"""The data layer: the setting, the registry, clear errors, checksums, and no writes to the root."""

import os
import stat
from pathlib import Path

import pytest

from dgmbook import data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_root() -> Path:
    root = os.environ.get(data.DATA_ENV)
    return Path(root) if root else SHARED


def test_registry_matches_shared_sha256sums():
    """Every file of ../shared/data/SHA256SUMS is registered with the same sum (and vice versa,
    apart from the decompressed IDX copies, which the loaders do not read)."""
    sums_file = shared_root() / "SHA256SUMS"
    if not sums_file.exists():
        pytest.skip(f"no {sums_file}")
    listed = {}
    for line in sums_file.read_text().splitlines():
        digest, rel = line.split(maxsplit=1)
        listed[rel.removeprefix("./")] = digest
    registered = {f.relpath: f.sha256 for ds in data.REGISTRY.values() for f in ds.files}
    assert registered == {k: v for k, v in listed.items() if k in registered}
    assert set(listed) == set(registered)


def test_data_root_setting(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.data_root() == tmp_path.resolve()
    assert data.root_is_read_only()
    monkeypatch.delenv(data.DATA_ENV)
    assert "dgmbook" in str(data.data_root()) and not data.root_is_read_only()


def test_missing_file_error_names_everything(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.dataset_file("dialogsum", "train.jsonl")
    msg = str(err.value)
    for needle in ["'dialogsum'", "dialogsum/train.jsonl", str(tmp_path / "dialogsum" / "train.jsonl"),
                   data.DATA_ENV, "github.com/cylnlp/dialogsum", "read-only"]:
        assert needle in msg, needle
    assert not any(tmp_path.iterdir()), "the data root was written to"


def test_image_dataset_missing_in_read_only_root(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    with pytest.raises(data.DatasetNotFoundError, match="MNIST/raw/train-images-idx3-ubyte.gz"):
        data.load_image_dataset("MNIST", train=True)
    assert not any(tmp_path.iterdir())


def test_checksum_mismatch(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    bad = tmp_path / "xsum" / "test-1000.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"document": "tampered", "summary": "x", "id": "0"}\n')
    with pytest.raises(data.ChecksumError, match="expected d824400a"):
        data.dataset_file("xsum", "test-1000.jsonl")


def test_unknown_names():
    with pytest.raises(KeyError, match="registered"):
        data.dataset_file("imagenet", "x")
    with pytest.raises(KeyError, match="has no file"):
        data.dataset_file("dialogsum", "nope.jsonl")


def test_reads_a_read_only_mirror_without_writing(monkeypatch):
    root = shared_root()
    if not (root / "dialogsum" / "test.jsonl").exists():
        pytest.skip("no data mirror")
    monkeypatch.setenv(data.DATA_ENV, str(root))
    before = sorted(p.name for p in root.iterdir())
    rows = data.read_jsonl("dialogsum", "test.jsonl")
    assert len(rows) == 500 and {"id", "dialogue", "summary1"} <= rows[0].keys()
    images, labels = data.load_image_dataset("MNIST", train=False)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert images.dtype.is_floating_point is False and int(labels.max()) == 9
    assert sorted(p.name for p in root.iterdir()) == before


def test_download_into_default_cache(monkeypatch, tmp_path):
    """With no setting, a missing file is downloaded into the cache root, converted, verified."""
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setattr(data, "data_root", lambda: tmp_path)
    upstream = b'{"fname": "test_0", "dialogue": "hi", "summary": "s", "topic": "t"}\n'

    class FakeResponse:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self):
            return upstream

    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: FakeResponse())
    # The converted file is not the real DialogSum, so verification must reject it...
    with pytest.raises(data.ChecksumError):
        data.dataset_file("dialogsum", "test.jsonl")
    written = tmp_path / "dialogsum" / "test.jsonl"
    # ...after converting `fname` to `id`, as the canonical files have it.
    assert written.read_text().startswith('{"id": "test_0"')


def test_download_failure_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setattr(data, "data_root", lambda: tmp_path)

    def offline(url, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(data.DatasetNotFoundError, match="downloading https://.*network unreachable"):
        data.dataset_file("xsum", "test-1000.jsonl")


@pytest.mark.parametrize("name", sorted(data.REGISTRY))
def test_every_dataset_fails_to_download_with_a_clear_error(monkeypatch, tmp_path, name, capfd):
    """With no network, each dataset's loader raises DatasetNotFoundError naming the dataset,
    the file and where to get it (MNIST and Fashion-MNIST go through torchvision, whose own
    error is a bare RuntimeError after it tried every mirror)."""
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setattr(data, "data_root", lambda: tmp_path)

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    ds = data.REGISTRY[name]
    with pytest.raises(data.DatasetNotFoundError) as err:
        if name in ("MNIST", "FashionMNIST"):
            data.load_image_dataset(name)
        else:
            for f in ds.files:
                data.dataset_file(name, f.relpath.split("/", 1)[1])
    message = str(err.value)
    assert f"dataset {name!r}" in message and "Get it from" in message
    assert str(tmp_path) in message
    capfd.readouterr()  # torchvision prints each failed mirror
