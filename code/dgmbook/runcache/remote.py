"""The published run cache: archives that the publish step packs, and that a reader's cache fetches.

Layout of a published cache (``<site>/runcache/``)::

    index.json                  format, code revision, and for every entry its sha256 and the
                                archives that hold it; for every archive its file, sha256, size
    <chapter>-<revision>.tar.gz one archive per chapter: the entries that chapter uses

When :func:`dgmbook.runcache.cached` misses an entry and ``DGMBOOK_REMOTE_CACHE`` names a published
cache that lists it, :func:`fetch` downloads the archive of the running chapter with pooch
(retries, sha256 check), checks every entry's own sha256 and format, and only then moves the
entries into the local cache. A download that does not match its sum raises
:class:`RemoteCacheError` naming the file and the sum, and writes nothing. When the published cache
cannot be reached at all (offline), a warning says so once and the runs are computed here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import warnings
from pathlib import Path

from . import entry

REMOTE_ENV = "DGMBOOK_REMOTE_CACHE"
INDEX = "index.json"
INDEX_FORMAT = "dgmbook-runcache-index/1"
_ENTRY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[0-9a-f]{20}\.safetensors$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_OFF = {"", "0", "off", "false", "no", "none"}


class RemoteCacheError(RuntimeError):
    """The published run cache served something that does not match its index."""


def remote_url() -> str | None:
    """The published cache's base URL (ending in ``/``), or None when fetching is off."""
    url = os.environ.get(REMOTE_ENV, "").strip()
    if url.lower() in _OFF:
        return None
    return url if url.endswith("/") else url + "/"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- packing (the publish step) -----------------------------------------------------------------

def pack(cache_root: Path, chapters: dict[str, list[str]], out_dir: Path, revision: str) -> dict:
    """Write one archive per chapter (the entries it used that exist in ``cache_root``) and
    ``index.json`` into ``out_dir``; return the index."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", revision)[:20] or "unknown"
    index: dict = {"format": INDEX_FORMAT, "entry_format": entry.FORMAT, "revision": revision,
                   "archives": {}, "entries": {}}
    for chapter, rels in chapters.items():
        rels = sorted(r for r in set(rels) if (cache_root / r).is_file())
        if not rels:
            continue
        for rel in rels:
            if not _ENTRY_NAME.match(rel):
                raise ValueError(f"not a run-cache entry name: {rel!r}")
            entry.read_meta(cache_root / rel)  # packs readable entries only (EntryError if not)
        file = f"{chapter}-{tag}.tar.gz"
        path = out_dir / file
        with tarfile.open(path, "w:gz", compresslevel=1) as tar:
            for rel in rels:
                info = tar.gettarinfo(str(cache_root / rel), arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                with open(cache_root / rel, "rb") as fh:
                    tar.addfile(info, fh)
                rec = index["entries"].setdefault(rel, {"sha256": sha256_file(cache_root / rel),
                                                        "archives": []})
                rec["archives"].append(chapter)
        index["archives"][chapter] = {"file": file, "sha256": sha256_file(path),
                                      "size": path.stat().st_size, "entries": len(rels)}
    (out_dir / INDEX).write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


# --- fetching (a reader's cache) ------------------------------------------------------------------

_indexes: dict[str, dict | None] = {}


def _pooch():
    import pooch

    pooch.get_logger().setLevel(logging.WARNING)  # its INFO lines would land in chapter output
    return pooch


def _download(base: str, file: str, sha256: str | None, into: Path) -> Path:
    from dgmbook.utils import progress_enabled

    pooch = _pooch()
    known = f"sha256:{sha256}" if sha256 else None
    fetcher = pooch.create(path=into, base_url=base, registry={file: known}, retry_if_failed=2)
    return Path(fetcher.fetch(file, progressbar=progress_enabled()))


def _index(base: str) -> dict | None:
    """The published index, once per process; None (after one warning) if it cannot be had."""
    if base in _indexes:
        return _indexes[base]
    index = None
    with tempfile.TemporaryDirectory(prefix="dgmbook-index-") as tmp:
        try:
            index = json.loads(_download(base, INDEX, None, Path(tmp)).read_text())
            if index.get("format") != INDEX_FORMAT or index.get("entry_format") != entry.FORMAT:
                warnings.warn(f"the published run cache {base} is in another format "
                              f"({index.get('format')}); runs are computed here", stacklevel=4)
                index = None
        except Exception as e:  # offline, 404, not JSON: the cache is an optimisation
            warnings.warn(f"the published run cache {base}{INDEX} cannot be read ({e}); runs are "
                          f"computed here (set {REMOTE_ENV}=off to stop trying)", stacklevel=4)
            index = None
    _indexes[base] = index
    return index


def fetch(rel: str, cache_root: Path, chapter: str | None = None) -> bool:
    """Fetch entry ``rel`` (``name/key.safetensors``) into ``cache_root`` with the rest of its
    archive. False if fetching is off, the published cache is unreachable or lacks the entry."""
    base = remote_url()
    if base is None:
        return False
    index = _index(base)
    if not index or rel not in index.get("entries", {}):
        return False
    holders = index["entries"][rel]["archives"]
    install_archive(base, index, chapter if chapter in holders else holders[0], cache_root)
    return (cache_root / rel).exists()


def install_archive(base: str, index: dict, archive: str, cache_root: Path) -> list[str]:
    """Download ``archive``, verify it and every entry in it, then move its entries into
    ``cache_root`` (those not there already). Returns the entries installed."""
    info = index["archives"][archive]
    file, sha = info["file"], info["sha256"]
    if not _FILE_NAME.match(file):
        raise RemoteCacheError(f"the index of {base} names an unsafe archive file {file!r}")
    wanted = {rel: rec["sha256"] for rel, rec in index["entries"].items() if archive in rec["archives"]}
    unsafe = [rel for rel in wanted if not _ENTRY_NAME.match(rel)]
    if unsafe:
        raise RemoteCacheError(f"the index of {base} names unsafe entries {unsafe[:3]}")
    with tempfile.TemporaryDirectory(prefix="dgmbook-fetch-") as tmp:
        tmp = Path(tmp)
        try:
            local = _download(base, file, sha, tmp / "download")
        except ValueError as e:  # pooch: the sha256 does not match
            raise RemoteCacheError(
                f"the published run-cache archive {base}{file} does not match its sha256 {sha} "
                f"(index.json): it is truncated or corrupt; nothing was written to the cache. "
                f"({e})") from None
        staged = tmp / "entries"
        try:
            with tarfile.open(local, "r:*") as tar:
                for member in tar:
                    if member.name not in wanted or not member.isfile():
                        raise RemoteCacheError(f"{base}{file} holds {member.name!r}, which its "
                                               "index does not list for it")
                    dest = staged / member.name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise RemoteCacheError(f"the published run-cache archive {base}{file} (sha256 {sha}) "
                                   f"cannot be unpacked ({e}); nothing was written") from None
        for rel, want in wanted.items():
            got = sha256_file(staged / rel) if (staged / rel).is_file() else "missing"
            if got != want:
                raise RemoteCacheError(f"entry {rel} in {base}{file} has sha256 {got}, the index "
                                       f"says {want}; nothing was written to the cache")
            entry.read_meta(staged / rel)  # a readable entry (EntryError otherwise)
        installed = []
        for rel in wanted:
            dest = cache_root / rel
            if dest.exists():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(f".{dest.name}.fetch{os.getpid()}")
            shutil.copyfile(staged / rel, part)
            os.replace(part, dest)
            installed.append(rel)
    return installed
