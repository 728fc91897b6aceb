# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""Writing the files a user sees (reconstructions, model cards, saved model folders) so that a failure loses nothing.

Each file is written under a temporary name in its own folder and moved into place with one `rename`, which is
atomic on one file system: a full disk, an error or Ctrl-C leaves either the old entry or the new file, never a
truncated one, and the temporary file is removed. An existing entry is never written through: a symbolic link at
the target is replaced itself (or, where nothing may be replaced, counts as taken), so the file it points to stays
as it was.
"""

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _reason(err: BaseException) -> str:
    return (err.strerror if isinstance(err, OSError) and err.strerror else None) or str(err) or type(err).__name__


def _publish(temporary: Path, path: Path, replace: bool) -> None:
    """Move `temporary` to `path`; without `replace`, only where nothing (not even a dangling link) is at `path`."""
    if replace:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)  # fails where `path` exists, with no window in which it could be replaced
    except FileExistsError:
        raise
    except OSError as err:  # a file system without hard links (FAT, some network mounts)
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS, errno.EXDEV):
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.replace(temporary, path)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    r"""
    A temporary path in `path`'s folder, to write the file to; when the block ends without an error it becomes
    `path`, in one rename.

    Args:
        path (`str` or `os.PathLike`): The file to write. Its folder must exist.
        replace (`bool`, *optional*, defaults to `False`): Replace an existing entry at `path` (a link is replaced
            itself, never written through). Without it, anything at `path` stops the write with an error.

    Raises:
        `OSError`: The write or the move failed (a full disk, no permission, `path` taken); the message names `path`.
            The temporary file is removed, also after any other error or Ctrl-C.

    Examples:
        ```py
        >>> import tempfile
        >>> from pathlib import Path
        >>> from diffusers_dito.atomic_files import atomic_write

        >>> folder = Path(tempfile.mkdtemp())
        >>> with atomic_write(folder / "notes.txt") as tmp:
        ...     _ = tmp.write_text("complete")
        >>> [p.name for p in folder.iterdir()], (folder / "notes.txt").read_text()
        (['notes.txt'], 'complete')
        >>> try:
        ...     with atomic_write(folder / "notes.txt") as tmp:
        ...         _ = tmp.write_text("other")
        ... except OSError as err:
        ...     print(str(err).replace(str(folder), "folder"))
        could not write folder/notes.txt: it already exists

        ```
    """
    path = Path(path)
    temporary = _temporary_name(path)
    try:
        # Created with the mode an ordinary `open` gives (the umask applies), unlike tempfile's private 0600.
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as err:
        raise OSError(f"could not write {path}: {_reason(err)}") from err
    try:
        yield temporary
        _publish(temporary, path, replace)
    except FileExistsError as err:
        raise OSError(f"could not write {path}: it already exists") from err
    except OSError as err:
        raise OSError(f"could not write {path}: {_reason(err)}") from err
    finally:
        temporary.unlink(missing_ok=True)


def save_folder_atomically(folder: str | os.PathLike, save: Callable[[Path], None], last: str | None = None) -> None:
    r"""
    `save(tmp)` into a temporary folder inside `folder`, then each entry it wrote moved into `folder` by one rename:
    a failure leaves `folder` without any half-written file or sub-folder, and removes the temporary folder.

    Entries already in `folder` are replaced, except a `README.md`, whose card (evaluation rows included) is kept,
    as `save_pretrained` keeps it. `last` is moved after everything else (a pipeline's `model_index.json`: the folder
    reads as a pipeline only once its components are in place).

    Raises:
        `OSError`: Saving or moving failed; the message names `folder`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = _temporary_name(folder / "save")
    try:
        staging.mkdir()
        save(staging)
        for entry in sorted(staging.iterdir(), key=lambda entry: entry.name == last):
            target = folder / entry.name
            if entry.name == "README.md" and target.exists():
                continue
            if target.is_dir() and not target.is_symlink():
                old = _temporary_name(target)
                os.rename(target, old)  # a folder cannot be replaced in one rename: move it aside, then delete it
                try:
                    os.rename(entry, target)
                except OSError:
                    os.rename(old, target)
                    raise
                shutil.rmtree(old)
            else:
                os.replace(entry, target)
    except OSError as err:
        raise OSError(f"could not write {folder}: {_reason(err)}") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
