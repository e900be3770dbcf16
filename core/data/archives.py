"""Image files in a folder, .tar.gz, .tgz, .tar or .zip, read member by member in memory, never extracted,
and refused when they hold more than a dataset could (MAX_*): a hostile archive is stopped before it costs
memory or time. No torch here."""
from __future__ import annotations

import os
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from core.data.images import IMAGE_SUFFIXES
from core.data.sources import HOW_TO_GET_DATA, LAYOUTS, DataError
from core.units import bytes_text


# More than any dataset worth training here holds (CIFAR-10: 60,000 files, 55 MB): beyond, a bomb.


# More than any dataset worth training here holds (CIFAR-10: 60,000 files, 55 MB): beyond, a bomb.
MAX_MEMBERS = 200_000


MAX_MEMBER_BYTES = 20_000_000


MAX_TOTAL_BYTES = 2_000_000_000


MAX_DIRECTORY_BYTES = 32_000_000  # a zip's central directory, which zipfile reads whole into memory


MAX_RECORD_BYTES = 1024           # per member in that directory: a name, its extras, a comment


ImageFile = tuple[tuple[str, ...], bytes]  # (path parts inside the folder or archive, file bytes)


def image_files(path: Path) -> list[ImageFile]:
    """Every image file in a folder or archive, refusing one that holds more than a dataset could."""
    budget = _Budget(path)
    if path.is_dir():
        files = _folder_files(path, budget)
    elif path.name.lower().endswith((".tar.gz", ".tgz", ".tar")):
        files = _tar_files(path, budget)
    elif path.name.lower().endswith(".zip"):
        files = _zip_files(path, budget)
    else:
        raise DataError(f"{path}: not a folder or a .tar.gz, .tgz, .tar or .zip archive. Accepted: {LAYOUTS}. "
                        f"{HOW_TO_GET_DATA}")
    try:
        return list(files)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError,
            NotImplementedError) as e:  # unreadable, damaged, truncated, encrypted or in an unknown compression
        raise DataError(f"{path}: cannot read it ({e}). {HOW_TO_GET_DATA}") from None


def _folder_files(root: Path, budget: _Budget) -> Iterator[ImageFile]:
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not _hidden(d))
        for name in sorted(names):
            file = Path(folder, name)
            member = file.relative_to(root).as_posix()
            size = file.stat().st_size if file.is_file() else 0
            budget.count(member, size)
            parts = _image_path(member)
            if parts and file.is_file():
                budget.check_file(member, size)
                yield parts, file.read_bytes()


def _tar_files(path: Path, budget: _Budget) -> Iterator[ImageFile]:
    with tarfile.open(path, "r|*") as archive:  # a stream: one pass, member by member
        for member in archive:
            regular = member.isreg()  # not a directory, link, device or fifo
            budget.count(member.name, member.size if regular else 0)
            parts = _image_path(member.name) if regular else None
            if parts:
                budget.check_file(member.name, member.size)
                yield parts, archive.extractfile(member).read()


# The end of a zip: its end-of-central-directory record, and before it, in a ZIP64 archive, a ZIP64 one
# with a locator. zipfile reads the last 64 KiB to find them, as here, then the whole directory.
EOCD = struct.Struct("<4s4H2LH")        # signature, disks, entries here and in all, directory size and offset


ZIP64_LOCATOR = struct.Struct("<4sLQL")  # signature, disk, record offset, disks


ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # signature, size, versions, disks, entries here and in all, size, offset


def _check_zip_directory(path: Path) -> None:
    """Refuse a zip whose end record declares more members, or a larger directory, than a dataset could
    have, from the few bytes at its end, before zipfile reads (and trusts) the directory itself."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - EOCD.size - 0xFFFF))  # the record, and a comment of at most 64 KiB
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < EOCD.size:
        return  # not a zip: zipfile says so
    _, _, _, _, entries, size, _, _ = EOCD.unpack_from(tail, at)
    locator = at - ZIP64_LOCATOR.size
    if locator >= ZIP64_EOCD.size and tail[locator:locator + 4] == b"PK\x06\x07":
        record = ZIP64_EOCD.unpack_from(tail, locator - ZIP64_EOCD.size)
        if record[0] == b"PK\x06\x06":
            entries, size = record[7], record[8]
    if entries > MAX_MEMBERS:
        raise DataError(f"{path}: its directory declares {entries:,} files, more than the {MAX_MEMBERS:,} a "
                        f"dataset could have; refused unread")
    if size > min(MAX_DIRECTORY_BYTES, max(entries, 1) * MAX_RECORD_BYTES):
        raise DataError(f"{path}: its directory declares {bytes_text(size)} for {entries:,} files, more than "
                        f"they could need: damaged or crafted; refused unread")


def _zip_files(path: Path, budget: _Budget) -> Iterator[ImageFile]:
    _check_zip_directory(path)
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 when made where files have no type bits
            regular = not info.is_dir() and file_type in (0, stat.S_IFREG)  # symlinks are not
            budget.count(info.filename, info.file_size if regular else 0)
            parts = _image_path(info.filename) if regular else None
            if parts:
                budget.check_file(info.filename, info.file_size)
                yield parts, archive.read(info)  # zipfile stops at the declared size and checks the CRC


def _image_path(name: str) -> tuple[str, ...] | None:
    """The parts of a member's path if it is an image to read; None for anything else, including absolute
    paths, paths with `..` and hidden or macOS metadata files (nothing is written, but nothing is trusted)."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or any(_hidden(part) for part in path.parts):
        return None
    return path.parts if path.suffix.lower() in IMAGE_SUFFIXES else None


def _hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


class _Budget:
    """Counts members and bytes of a folder or archive as it is read, and stops at the MAX_* limits."""

    def __init__(self, path: Path):
        self.path, self.members, self.total_bytes = path, 0, 0

    def count(self, member: str, size: int) -> None:
        self.members += 1
        self.total_bytes += size
        if self.members > MAX_MEMBERS:
            raise DataError(f"{self.path}: more than {MAX_MEMBERS:,} files; refused as too many for a dataset "
                            f"(a hostile archive?). Split it or remove what is not needed")
        if self.total_bytes > MAX_TOTAL_BYTES:
            raise DataError(f"{self.path}: more than {bytes_text(MAX_TOTAL_BYTES)} uncompressed (at {member}); "
                            f"refused as too large for a dataset (a hostile archive?). Resize the images first")

    def check_file(self, member: str, size: int) -> None:
        if size > MAX_MEMBER_BYTES:
            raise DataError(f"{self.path}: {member} is {bytes_text(size)}, over the {bytes_text(MAX_MEMBER_BYTES)} "
                            f"allowed for one image; resize it or remove it")
