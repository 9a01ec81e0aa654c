"""Files the testbed reads and writes, checked in one place.

Inputs a scenario names (trace CSVs, a zoo's index, cards and dataset) must be regular files
under a size limit: a FIFO would hang a run, `/dev/zero` would fill its memory. Outputs stay
inside the run folder (`run_path`), files that would mislead when torn (the summary, the merged
events) are written whole (`write_whole`: a temporary file, then a rename), and a write that
fails because the disk is full says so (`DiskFull`) instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final, TextIO

from cascade_testbed.common.names import check_name

KIB: Final = 1 << 10
MIB: Final = 1 << 20
DISK_ERRORS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG,
                                errno.EROFS})
"""Write errors that mean the medium cannot take the run's data (not a bug of the testbed)."""


class InputFileError(ValueError):
    """An input file that is missing, not a regular file, or larger than its limit."""


class OutsideRunFolder(ValueError):
    """A path that would leave the run folder."""


class DiskFull(OSError):
    """A write the disk refused (full, over quota, read-only, I/O error)."""

    def __init__(self, path: Path | str, cause: OSError) -> None:
        self.path = str(path)
        self.cause = cause
        what = "disk full" if cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) \
            else os.strerror(cause.errno or errno.EIO).lower()
        super().__init__(cause.errno, f"{what} while writing {self.path}")

    def __str__(self) -> str:
        return str(self.strerror)


def is_disk_error(exc: BaseException) -> bool:
    return isinstance(exc, DiskFull) or (isinstance(exc, OSError) and exc.errno in DISK_ERRORS)


def as_disk_full(exc: OSError, path: Path | str) -> OSError:
    """The error to raise for a failed write of `path`: `DiskFull` when the medium refused."""
    return DiskFull(path, exc) if exc.errno in DISK_ERRORS else exc


def check_regular(path: Path | str, limit_bytes: int, what: str) -> Path:
    """`path` if it is a regular file of at most `limit_bytes`, else `InputFileError`."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputFileError(f"{what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError(f"{what} {path} is not a regular file")
    if st.st_size > limit_bytes:
        raise InputFileError(f"{what} {path} is {st.st_size} bytes, more than the limit of "
                             f"{limit_bytes}")
    return path


def read_text(path: Path | str, limit_bytes: int, what: str) -> str:
    """The text of a regular input file under `limit_bytes` (read no further than the limit,
    should it grow in between)."""
    path = check_regular(path, limit_bytes, what)
    try:
        with path.open("rb") as f:
            data = f.read(limit_bytes + 1)
    except OSError as exc:
        raise InputFileError(f"{what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit_bytes:
        raise InputFileError(f"{what} {path} grew past the limit of {limit_bytes} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise InputFileError(f"{what} {path} is not UTF-8 text") from None


def run_path(run_dir: Path, *parts: str, suffix: str = "") -> Path:
    """`run_dir/parts[0]/.../parts[-1]<suffix>`, where every part is a name: the one way a
    name from a scenario, the CLI or the wire becomes a file of a run. The resolved path is
    checked to lie inside the run folder (a symlinked part cannot lead out either)."""
    for part in parts:
        name, tilde, incarnation = part.partition("~")  # `<device>~k`: a restarted device
        check_name(name, "file name")
        if tilde and not (incarnation.isdigit() and incarnation.isascii()):
            raise OutsideRunFolder(f"file name {part[:80]!r}: '~' must be followed by digits")
    path = run_dir.joinpath(*parts[:-1], parts[-1] + suffix) if parts else run_dir
    root = run_dir.resolve()
    if not path.resolve().is_relative_to(root):
        raise OutsideRunFolder(f"{path} is outside the run folder {run_dir}")
    return path


def file_mode() -> int:
    """The mode a new result file gets: 0666 less the process's umask, as `open` gives (a
    temporary file would be 0600, and results would be private while the scenario beside them
    is not). Only the run's `.token` is kept private, on purpose."""
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask: from /proc on Linux (reading it does not change it); elsewhere by
    setting it and putting it back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def whole_file(path: Path, newline: str | None = None) -> Iterator[TextIO]:
    """A text file that appears at `path` only once it is complete: written to a temporary
    file beside it and renamed over it, so readers see the old file or the new one, never half
    of one. `DiskFull` if the disk refuses."""
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w", newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise as_disk_full(exc, path) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_whole(path: Path, text: str) -> None:
    """`text` at `path`, whole or not at all (`whole_file`)."""
    with whole_file(path) as f:
        f.write(text)


TOKEN_ENV: Final = "TESTBED_TOKEN"
TOKEN_FILE_LIMIT: Final = 4 * KIB


def resolve_token(given: str | None, token_file: Path | str | None = None,
                  environ: dict[str, str] | None = None) -> str:
    """The run token from, in order: a file (`--token-file`), the command line (`--token`,
    which other users can read in `ps`), the `TESTBED_TOKEN` environment variable; "" if none.
    A file's surrounding whitespace (its trailing newline) is not part of the token."""
    if token_file is not None:
        token = read_text(token_file, TOKEN_FILE_LIMIT, "token file").strip()
        if not token:
            raise InputFileError(f"token file {token_file} is empty")
        return token
    if given:
        return given
    return (os.environ if environ is None else environ).get(TOKEN_ENV, "")
