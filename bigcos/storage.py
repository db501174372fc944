"""Paths or URLs: local paths stay :class:`pathlib.Path`; ``s3://``, ``gs://``, ``abfs://``,
``file://`` (and any scheme fsspec knows) become a :class:`StorePath` on a pyarrow filesystem.

:func:`as_path` is the one entry point: every place bigcos accepts a path passes it through, so
a plain path keeps today's code path (``Path`` operations, rename-based atomic directories in
:mod:`bigcos.io`), and a URL gets a :class:`StorePath`, which offers the few ``Path`` operations
bigcos uses (``/``, ``name``, ``parent``, ``exists``, ``open``, ``read_text``, ``glob`` ...) on
``pyarrow.fs.FileSystem.from_uri(url)`` (fsspec, wrapped in pyarrow's ``FSSpecHandler``, for a
scheme pyarrow lacks). Credentials, endpoints and regions come from each store's standard
environment and configuration (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_ACCOUNT_NAME`` ...), never from bigcos.

A StorePath pickles as its URL, so Dask workers rebuild the filesystem from their own
environment and read and write the store directly.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from bigcos.errors import UserError

# schemes whose store path is "<netloc><path>" (bucket or container first)
_BUCKET_SCHEMES = ("s3", "gs", "gcs")


def is_url(value: Any) -> bool:
    """Whether ``value`` is a URL string (``scheme://...``) rather than a local path."""
    if isinstance(value, StorePath):
        return True
    if not isinstance(value, str) or "://" not in value:
        return False
    scheme = value.split("://", 1)[0]
    return scheme.isascii() and scheme.replace("+", "").replace("-", "").isalnum() \
        and len(scheme) > 1


def as_path(value: str | os.PathLike | StorePath) -> Path | StorePath:
    """A local ``Path`` for a path, a :class:`StorePath` for a URL (``scheme://...``)."""
    if isinstance(value, StorePath):
        return value
    if isinstance(value, str) and is_url(value):
        return StorePath(value.rstrip("/") if not value.endswith(":///") else value)
    return Path(value)


def resolve(value: str | os.PathLike | StorePath) -> Path | StorePath:
    """:func:`as_path`, made absolute for a local path (``Path.resolve``)."""
    p = as_path(value)
    return p.resolve() if isinstance(p, Path) else p


@functools.lru_cache(maxsize=32)
def _filesystem(root: str):
    """The filesystem of ``scheme://netloc`` (cached: one client per bucket and process)."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(root + "/")[0]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    try:
        import fsspec

        scheme = root.split("://", 1)[0]
        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme)))
    except (ImportError, ValueError) as exc:
        raise UserError(f"{root}: no filesystem for this URL scheme ({exc})") from None


def _split(url: str) -> tuple[str, str]:
    """(``scheme://netloc``, the path inside that store's pyarrow filesystem)."""
    parts = urlsplit(url)
    scheme, netloc, path = parts.scheme, parts.netloc, unquote(parts.path)
    root = f"{scheme}://{netloc}"
    if scheme == "file":
        if netloc not in ("", "localhost"):
            raise UserError(f"{url}: a file:// URL names no host (use file:///absolute/path)")
        return root, path or "/"
    if scheme in _BUCKET_SCHEMES:
        return root, (netloc + path).rstrip("/")
    if scheme in ("abfs", "abfss", "az"):
        return root, (netloc.split("@", 1)[0] + path).rstrip("/")
    fs = _filesystem(root)
    strip = getattr(getattr(fs, "handler", None), "fs", None)
    return root, (strip._strip_protocol(url) if strip is not None else path).rstrip("/")


class _Stat:
    def __init__(self, size: int, mtime_ns: int) -> None:
        self.st_size, self.st_mtime_ns, self.st_mtime = size, mtime_ns, mtime_ns / 1e9


class StorePath:
    """A file or directory in a store: its URL, its pyarrow filesystem and path there.

    Only the operations bigcos needs; a "directory" is a prefix (it exists when an object lies
    below it), :meth:`mkdir` creates one only where the filesystem has directories.
    """

    __slots__ = ("url", "_root", "path")

    def __init__(self, url: str, _root: str | None = None, _path: str | None = None) -> None:
        self.url = url
        if _root is None:
            _root, _path = _split(url)
        self._root, self.path = _root, _path

    # ---------------------------------------------------------------- identity
    @property
    def fs(self):
        """The ``pyarrow.fs.FileSystem`` holding this path."""
        return _filesystem(self._root)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"StorePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other: StorePath) -> bool:  # by components, as Paths sort
        return (self._root, self.parts) < (other._root, other.parts)

    def __reduce__(self):
        return StorePath, (self.url,)

    def __truediv__(self, name: str | os.PathLike) -> StorePath:
        name = os.fspath(name).strip("/")
        return StorePath(f"{self.url}/{name}", self._root, f"{self.path}/{name}")

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0] if "." in self.name[1:] else self.name

    @property
    def suffix(self) -> str:
        return "." + self.name.rsplit(".", 1)[1] if "." in self.name[1:] else ""

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(p for p in self.path.split("/") if p)

    @property
    def parent(self) -> StorePath:
        if "/" not in self.path.strip("/"):
            return self
        return StorePath(self.url.rsplit("/", 1)[0], self._root, self.path.rsplit("/", 1)[0])

    @property
    def parents(self) -> list[StorePath]:
        out, p = [], self.parent
        while p != (out[-1] if out else self):
            out.append(p)
            p = p.parent
        return out

    def with_name(self, name: str) -> StorePath:
        return self.parent / name

    def resolve(self) -> StorePath:
        return self

    def as_posix(self) -> str:
        return self.url

    # ---------------------------------------------------------------- queries
    def _info(self):
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.File

    def stat(self) -> _Stat:
        """Size and modification time; of a directory, its newest file's time."""
        import pyarrow.fs as pafs

        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(self.url)
        if info.type == pafs.FileType.Directory:
            times = [i.mtime_ns or 0 for i in self._walk() if i.type == pafs.FileType.File]
            return _Stat(0, max(times, default=info.mtime_ns or 0))
        return _Stat(info.size or 0, info.mtime_ns or 0)

    def _walk(self, recursive: bool = True) -> list:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True,
                                                        recursive=recursive))

    def _child(self, path: str) -> StorePath:
        rel = path[len(self.path):].strip("/")
        return self / rel if rel else self

    def iterdir(self) -> Iterator[StorePath]:
        for info in self._walk(recursive=False):
            yield self._child(info.path)

    def files(self) -> list[StorePath]:
        """Every file below this directory, sorted."""
        import pyarrow.fs as pafs

        return sorted(self._child(i.path) for i in self._walk() if i.type == pafs.FileType.File)

    def glob(self, pattern: str) -> list[StorePath]:
        """Entries whose path relative to this directory matches ``pattern`` component-wise
        (``*`` does not cross ``/``; no ``**``)."""
        want = pattern.strip("/").split("/")
        out = []
        for info in self._walk(recursive=len(want) > 1):
            rel = info.path[len(self.path):].strip("/").split("/")
            if len(rel) == len(want) and all(fnmatch.fnmatchcase(r, w)
                                             for r, w in zip(rel, want, strict=True)):
                out.append(self._child(info.path))
        return sorted(out)

    def rglob(self, pattern: str) -> list[StorePath]:
        """Entries at any depth whose name matches ``pattern``."""
        return sorted(self._child(i.path) for i in self._walk()
                      if fnmatch.fnmatchcase(i.path.rsplit("/", 1)[-1], pattern))

    # ---------------------------------------------------------------- changes
    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Create the directory where the filesystem has directories (a local one);
        object stores have none, so there it does nothing."""
        import pyarrow.fs as pafs

        if isinstance(self.fs, pafs.LocalFileSystem):
            if self.exists() and not exist_ok:
                raise FileExistsError(self.url)
            self.fs.create_dir(self.path, recursive=parents)

    def open(self, mode: str = "rb") -> IO:
        """A binary stream (``rb``: seekable random access, ``wb``: written on close)."""
        if mode in ("r", "rb"):
            return self.fs.open_input_file(self.path)
        if mode in ("w", "wb"):
            return self.fs.open_output_stream(self.path)
        raise ValueError(f"mode {mode!r} not supported on {self.url}")

    def read_bytes(self) -> bytes:
        with self.open("rb") as fh:
            return fh.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        with self.open("wb") as fh:
            fh.write(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        """Delete this directory and everything below it (nothing when absent)."""
        import pyarrow.fs as pafs

        if self._info().type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)

    def copy_to(self, target: StorePath) -> None:
        """Copy this file to ``target`` inside the store (server-side where it can)."""
        import pyarrow.fs as pafs

        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.create_dir(target.parent.path, recursive=True)
        self.fs.copy_file(self.path, target.path)


def rmtree(path: Path | StorePath) -> None:
    """Remove a directory tree, local or in a store; nothing when it does not exist."""
    import shutil

    if isinstance(path, StorePath):
        path.rmtree()
    else:
        shutil.rmtree(path, ignore_errors=True)


def filesystem_and_path(path: Path | StorePath | str) -> tuple[Any, str]:
    """(pyarrow filesystem or None for a local path, the path to give pyarrow with it)."""
    p = as_path(path)
    return (p.fs, p.path) if isinstance(p, StorePath) else (None, str(p))


@contextlib.contextmanager
def local_file(path: Path | StorePath) -> Iterator[Path]:
    """A local file to write ``path`` through, for writers that only take a local file name
    (e.g. Dask's performance report): ``path`` itself, or a temporary file uploaded to the
    store when the block succeeds."""
    import shutil
    import tempfile

    if not isinstance(path, StorePath):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="bigcos-upload-") as tmp:
        local = Path(tmp) / path.name
        yield local
        if local.exists():
            with open(local, "rb") as src, path.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
