"""ueo's own files: atomic writes (a temporary file in the same folder, renamed over the target),
safetensors files with a format tag in their metadata (adapted states, checkpoints), where ueo keeps what
it computes once (the cache folder), and what says a file is unchanged (its state, its digest)."""

from __future__ import annotations

import contextlib
import hashlib
import json
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


def default_cache_dir() -> Path:
    """Where ueo keeps what it computes once (decoded images, vocabulary features, file digests):
    $UEO_CACHE_DIR, else $XDG_CACHE_HOME/ueo, else ~/.cache/ueo."""
    if os.environ.get("UEO_CACHE_DIR"):
        return Path(os.environ["UEO_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ueo"


def file_state(stat: os.stat_result) -> str:
    """What says that a file is still the one seen before: size, modification and change times, inode and
    device. Writing a file, extracting an archive over it (tar restores the modification time, not the
    change time) or editing it in place and resetting its modification time all change its change time,
    which only the kernel sets; a file copied elsewhere is another inode. Assumed: the clock does not go
    back and no one rewrites the change time (that takes resetting the system clock)."""
    return f"{stat.st_size}\t{stat.st_mtime_ns}\t{stat.st_ctime_ns}\t{stat.st_ino}\t{stat.st_dev}"


DIGESTS = "digests.json"  # in the cache folder: {real path + file state: SHA-256}
MAX_DIGESTS = 1000


def file_digest(path, cache_dir=None) -> str:
    """The SHA-256 of a whole file (hex), read once per state of the file: it is remembered in the cache
    folder (``cache_dir``, default :func:`default_cache_dir`) under the file's real path and ``file_state``,
    as the decode cache keys images. A cache that cannot be written only costs reading the file again."""
    real = os.path.realpath(path)
    key = f"{real}\t{file_state(os.stat(real))}"
    memo = Path(cache_dir if cache_dir is not None else default_cache_dir()) / DIGESTS
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(key), str):
        return known[key]
    digest = hashlib.sha256()
    with open(real, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    known[key] = digest.hexdigest()
    kept = dict(list(known.items())[-MAX_DIGESTS:])  # the latest files
    with contextlib.suppress(OSError):
        mark_cache(memo.parent)
        write_text(memo, json.dumps(kept))
    return known[key]


CACHE_TAG = "CACHEDIR.TAG"  # the Cache Directory Tagging convention: backup tools skip the folder
CACHE_TAG_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This folder is ueo's cache (decoded images, vocabulary features, file digests): `ueo cache clear` empties it.\n"
)


def mark_cache(root) -> Path:
    """Create the cache folder ``root`` if needed, tagged as ueo's (CACHEDIR.TAG): ueo's housekeeping
    touches only a folder so tagged, and in it only the files ueo names as it does."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if not is_cache(root):
        write_text(root / CACHE_TAG, CACHE_TAG_TEXT)
    return root


def is_cache(root) -> bool:
    """Whether ``root`` is tagged as ueo's cache."""
    try:
        return "ueo's cache" in (Path(root) / CACHE_TAG).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
