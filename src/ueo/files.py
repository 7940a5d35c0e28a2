"""ueo's own files: atomic writes (a temporary file in the same folder, renamed over the target) and
safetensors files with a format tag in their metadata (adapted states, checkpoints)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import IncompatibleError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8; a file name that is not UTF-8 (held by Python as surrogate escapes) keeps its original bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")


def write_tagged(path, tensors: dict, metadata: dict[str, str], file_format: str) -> None:
    """A safetensors file of ``tensors`` whose metadata carries ``format: file_format``, written atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": file_format, **metadata}
        )


def read_tagged(path, file_format: str, what: str) -> tuple[dict[str, str], dict]:
    """(metadata, tensors) of a safetensors file written by :func:`write_tagged` with ``file_format``.
    Raises IncompatibleError, naming ``what`` was expected, for damaged files and other formats."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != file_format:
                raise IncompatibleError(f"{path} is not a {what} (no {file_format!r} format tag).")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (SafetensorError, OSError) as error:
        raise IncompatibleError(f"{path} is not a readable {what} ({error}).") from None
    return metadata, tensors
