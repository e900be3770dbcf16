"""Unlabelled test sets, as a course hands them out for a submission: image IDs and uint8 images, in the
file's order, with the file's sha256. No torch here.

Accepted (`read_unlabelled`):
  * the course pickle: a dict whose `data` is (N, 3072) uint8 in CIFAR's row layout (1,024 red values,
    then green, then blue; Spring 2024) or (N, 32, 32, 3) uint8 (Spring 2025), and whose `ids` holds the
    image IDs; keys as bytes (b'data') or str. It is read by `SafeUnpickler`, which loads numpy arrays and
    plain containers only: a pickle naming anything else is refused before anything in it runs.
  * a .npy of (N, 32, 32, 3) or (N, 3, 32, 32) uint8 (IDs 0..N-1), or a .npz holding such an array as
    `data` or `images` (or alone), with `ids` optionally; read without pickle.
  * a folder, .zip, .tar.gz, .tgz or .tar of images: ID = the file's stem (core.data.archives reads them,
    core.data.images decodes them). A folder's files come by name, numerically when every stem is a number;
    an archive's in its own order.
A file that is none of these, or holds the wrong shape, dtype, IDs or no image, gets one DataError naming it.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from core.data.archives import image_files
from core.data.images import IMAGE_SUFFIXES, ImageError, open_image, to_pixels
from core.data.sources import DataError

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
ACCEPTED = ("the course pickle (.pkl: a dict of `data` and `ids`), a .npy/.npz of (N, 32, 32, 3) or (N, 3, 32, 32) "
            "uint8, or a folder, .zip, .tar.gz or .tar of images (ID = file name without its suffix)")
MAX_FILE_BYTES = 2_000_000_000  # a pickle or array file: CIFAR-10's 10,000 test images are 31 MB
SIDE, CHANNELS, ROW = 32, 3, 32 * 32 * 3


@dataclass(frozen=True)
class UnlabelledSet:
    """Images to predict, in the order they came, with the IDs a submission names them by."""
    ids: list[str]
    images: np.ndarray   # uint8 (N, 3, 32, 32)
    sha256: str          # of the file (a folder: of its image files' names and bytes, in order)
    layout: str          # how it was read, in words

    def __len__(self) -> int:
        return len(self.ids)


# ---- pickles that cannot run code -------------------------------------------------------------------

# Everything a pickled numpy array (numpy 1.x or 2.x, protocols 0-5) and plain containers need; all of them
# only build data. numpy 1.x wrote numpy.core.*, 2.x writes numpy._core.*: both resolve to numpy._core.
ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # protocols 0-2 store bytes as a latin-1 str and encode it back
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "list"),
    ("builtins", "dict"), ("builtins", "tuple"), ("collections", "OrderedDict"),
    ("__builtin__", "set"), ("__builtin__", "frozenset"), ("__builtin__", "bytearray"),  # Python 2's names
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ALLOWED_GLOBALS: a pickle naming anything else (os.system in a
    __reduce__, a class of some module) fails at that name, before the call that would use it runs."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise DataError(f"it asks to load {module}.{name}, which is neither a numpy array nor a plain "
                            f"container: refused unrun (a pickle can run code; this one is not a test set)")
        if module.startswith("numpy.core."):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        elif module == "__builtin__":
            module = "builtins"
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise DataError("it refers to objects outside the file (persistent IDs): refused")


def safe_unpickle(data: bytes):
    """The object in a pickle of numpy arrays and plain containers; DataError for anything else. latin-1, as
    numpy asks, reads pickles Python 2 wrote too (their str keys come back as str)."""
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except DataError:
        raise
    except Exception as e:  # a damaged pickle fails in many ways (EOFError, UnpicklingError, ValueError, ...)
        raise DataError(f"not a readable pickle ({type(e).__name__}: {e}); give {ACCEPTED}") from None


# ---- reading ----------------------------------------------------------------------------------------

def read_unlabelled(path: str | Path) -> UnlabelledSet:
    """A test set from a file or folder on this machine (see the module's docstring); DataError names it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder. Give {ACCEPTED}")
    if path.is_dir():
        return _from_images(path, str(path))
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DataError(f"{path}: {path.stat().st_size:,} bytes, more than any test set; refused unread")
    return read_unlabelled_bytes(path.name, path.read_bytes(), str(path))


def read_unlabelled_bytes(name: str, data: bytes, where: str = "") -> UnlabelledSet:
    """A test set from a file's bytes (an upload called `name`); errors call it `where`, else `name`."""
    where = where or name
    lower = name.lower()
    try:
        if lower.endswith(ARCHIVE_SUFFIXES):
            with tempfile.TemporaryDirectory() as folder:  # core.data.archives reads archives from a path
                path = Path(folder) / Path(name).name
                path.write_bytes(data)
                try:
                    return _from_images(path, where)
                except DataError as e:
                    raise DataError(str(e).replace(str(path), where)) from None
        if not data:
            raise DataError("the file is empty")
        sha256 = hashlib.sha256(data).hexdigest()
        if data.startswith(b"\x93NUMPY"):
            return _from_arrays(_load_npy(data), None, sha256, ".npy")
        if data.startswith(b"PK\x03\x04"):  # a zip that is no archive of images: a .npz
            return _from_npz(data, sha256)
        return _from_pickle(safe_unpickle(data), sha256)
    except DataError as e:
        message = str(e)
        raise DataError(message if message.startswith(where) else f"{where}: {message}") from None


def _load_npy(data: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise DataError(f"not a .npy array numpy can read without pickle ({e})") from None


def _from_npz(data: bytes, sha256: str) -> UnlabelledSet:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"not a .npz numpy can read without pickle ({e})") from None
    images = [key for key in ("data", "images") if key in arrays]
    others = [key for key in arrays if key != "ids"]
    if not images and len(others) != 1:
        raise DataError(f"a .npz with arrays {', '.join(arrays) or 'none'}: name the images `data` (and the IDs "
                        f"`ids`)")
    return _from_arrays(arrays[images[0] if images else others[0]], arrays.get("ids"), sha256, ".npz")


def _from_pickle(obj, sha256: str) -> UnlabelledSet:
    if isinstance(obj, np.ndarray):
        return _from_arrays(obj, None, sha256, "pickled array")
    if not isinstance(obj, dict):
        raise DataError(f"a pickle of a {type(obj).__name__}, not the course's dict of `data` and `ids`")
    keys = {(k.decode("latin1") if isinstance(k, bytes) else k): k for k in obj}
    if "data" not in keys:
        found = ", ".join(repr(k) for k in obj) or "none"
        raise DataError(f"a pickled dict without a `data` entry (its keys: {found}); the course pickle has "
                        f"b'data' (the images) and b'ids'")
    ids = obj[keys["ids"]] if "ids" in keys else None
    return _from_arrays(obj[keys["data"]], ids, sha256, "course pickle")


def _from_arrays(data, ids, sha256: str, kind: str) -> UnlabelledSet:
    """(N, 3072) CIFAR rows, (N, 32, 32, 3) or (N, 3, 32, 32) uint8 as (N, 3, 32, 32), with checked IDs."""
    if not isinstance(data, np.ndarray):
        raise DataError(f"its images are a {type(data).__name__}, not a numpy array")
    if data.dtype != np.uint8:
        raise DataError(f"its images are {data.dtype}, not uint8 pixels 0-255; convert them with "
                        f".astype(np.uint8) (after scaling [0, 1] floats by 255)")
    shape = tuple(data.shape)
    if len(shape) == 2 and shape[1] == ROW:
        images, layout = data.reshape(-1, CHANNELS, SIDE, SIDE), "(N, 3072) CIFAR rows: red, green, blue planes"
    elif len(shape) == 4 and shape[1:] == (SIDE, SIDE, CHANNELS):
        images, layout = data.transpose(0, 3, 1, 2), "(N, 32, 32, 3) channels last"
    elif len(shape) == 4 and shape[1:] == (CHANNELS, SIDE, SIDE):
        images, layout = data, "(N, 3, 32, 32) channels first"
    else:
        raise DataError(f"its images have shape {shape}; expected (N, 3072) CIFAR rows, (N, 32, 32, 3) or "
                        f"(N, 3, 32, 32)")
    if len(images) == 0:
        raise DataError("it holds 0 images")
    if ids is None:
        id_list, layout = [str(i) for i in range(len(images))], layout + "; IDs 0..N-1 (the file has none)"
    else:
        id_list = _id_list(ids, len(images))
    return UnlabelledSet(id_list, np.ascontiguousarray(images), sha256, f"{kind}, {layout}")


def _id_list(ids, count: int) -> list[str]:
    values = ids.tolist() if isinstance(ids, np.ndarray) else ids
    if isinstance(ids, np.ndarray) and ids.ndim != 1:
        raise DataError(f"its IDs have shape {tuple(ids.shape)}; expected one ID per image, ({count},)")
    if not isinstance(values, (list, tuple)):
        raise DataError(f"its IDs are a {type(ids).__name__}; expected a list or 1-D array of numbers or names")
    if len(values) != count:
        raise DataError(f"it has {len(values):,} IDs for {count:,} images; each image needs one ID")
    names = []
    for value in values:
        if isinstance(value, bytes):
            value = value.decode("latin1")
        elif isinstance(value, np.integer):
            value = int(value)
        if not isinstance(value, (int, str)) or isinstance(value, bool) or str(value).strip() == "":
            raise DataError(f"an ID is {value!r}; IDs are whole numbers or names")
        names.append(str(value))
    _check_unique(names)
    return names


def _check_unique(ids: list[str]) -> None:
    seen: set[str] = set()
    duplicates = [i for i in ids if i in seen or seen.add(i)]
    if duplicates:
        shown = ", ".join(dict.fromkeys(duplicates[:5]))
        raise DataError(f"{len(duplicates):,} duplicate IDs (e.g. {shown}); each image needs its own ID")


def _from_images(path: Path, where: str) -> UnlabelledSet:
    files = image_files(path)
    if path.is_dir():
        stems = [PurePosixPath(*parts).stem for parts, _ in files]
        numeric = all(re.fullmatch(r"\d+", stem) for stem in stems)
        files = sorted(files, key=lambda f: (int(PurePosixPath(*f[0]).stem),) if numeric else f[0])
    if not files:
        raise DataError(f"{where}: it holds 0 images (no {', '.join(s.lstrip('.') for s in IMAGE_SUFFIXES)} files)")
    ids = [PurePosixPath(*parts).stem for parts, _ in files]
    try:
        _check_unique(ids)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    digest = hashlib.sha256()
    if path.is_dir():
        for parts, data in files:
            digest.update("/".join(parts).encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    else:
        digest.update(path.read_bytes())
    try:
        images = np.stack([to_pixels(open_image(data, "/".join(parts))) for parts, data in files])
    except ImageError as e:
        raise DataError(f"{where}: {e}; remove or replace that file") from None
    return UnlabelledSet(ids, images, digest.hexdigest(), "image files, ID = file name without its suffix")

