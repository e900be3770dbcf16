"""The data layer on real files: the built-in slice, torchvision's layout, class folders as folders and
archives, hostile archives, the cache, the validation split and custom test sets."""
import io
import os
import pickle
import stat
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import core.data.archives as archives
from core.data.datasets import CLASSES, Split, load_class_folders, load_dataset, split_validation
from core.data.sources import BUILTIN, BUILTIN_ARCHIVE, DataError, resolve_data
from tests.helpers import ROOT

SHARED_COPY = Path("/work/shared/cifar10/cifar10-jpg.tar.gz")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A fresh cache and working directory for every test, and no CIFAR10_DATA from the environment."""
    monkeypatch.setenv("RESNET_STUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CIFAR10_DATA", raising=False)
    monkeypatch.chdir(tmp_path)


def cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache").glob("*.safetensors"))


# ---- class-folder trees made in the tests ------------------------------------------------------

def colour(label: int, i: int) -> tuple[int, int, int]:
    """A flat colour that says which class and which image a decoded pixel came from."""
    return (40 * label + 10, 8 * i, 100)


def image_bytes(label: int, i: int) -> bytes:
    """PNGs of assorted sizes and modes, so decoding and resizing run on the way in."""
    size = [(32, 32), (48, 40), (20, 30)][i % 3]
    img = Image.new("RGB", size, colour(label, i))
    if i % 2:
        img = img.convert("RGBA")  # opaque, so the colour survives compositing
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def tree(train: dict[str, int], test: dict[str, int]) -> dict[str, bytes]:
    """{relative path: bytes} for train/<class>/<i>.png and test/<class>/<i>.png."""
    files = {}
    for split, counts in (("train", train), ("test", test)):
        for label, (cls, n) in enumerate(counts.items()):
            for i in range(n):
                files[f"{split}/{cls}/{i:03d}.png"] = image_bytes(label, i)
    return files


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


def write_zip(path: Path, files: dict[str, bytes], top: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, content in reversed(list(files.items())):  # archive order must not matter
            z.writestr(top + name, content)
    return path


def write_tar(path: Path, files: dict[str, bytes], top: str = "", mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as t:
        for name, content in files.items():
            info = tarfile.TarInfo(top + name)
            info.size = len(content)
            t.addfile(info, io.BytesIO(content))
    return path


SMALL = tree(train={"cat": 4, "dog": 3, "frog": 2}, test={"cat": 2, "dog": 1, "frog": 1})


def check_small(ds):
    assert ds.classes == ("cat", "dog", "frog")
    assert ds.train.labels.tolist() == [0] * 4 + [1] * 3 + [2] * 2
    assert ds.test.labels.tolist() == [0, 0, 1, 2]
    for split in (ds.train, ds.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (3, 32, 32)
        assert split.images.is_contiguous() and split.labels.dtype == torch.int64
    # each image is its class's flat colour, image by image in file-name order
    centre = ds.train.images[:, :, 16, 16].tolist()
    expected = [colour(label, i) for label, n in enumerate([4, 3, 2]) for i in range(n)]
    assert centre == [list(c) for c in expected]


# ---- the built-in slice and the cache ----------------------------------------------------------

def test_builtin_slice_loads_balanced_and_is_cached(tmp_path):
    ds = load_dataset(BUILTIN)
    assert ds.classes == CLASSES
    assert ds.train.images.shape == (5000, 3, 32, 32) and ds.test.images.shape == (1000, 3, 32, 32)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert ds.train.images.is_contiguous() and ds.test.images.is_contiguous()
    assert ds.train.labels.bincount().tolist() == [500] * 10
    assert ds.test.labels.bincount().tolist() == [100] * 10
    assert "built-in slice" in ds.source and "5,000 train / 1,000 test" in ds.source
    assert 40 < ds.train.images.float().mean() < 200  # real pictures, not blank

    (cached,) = cache_files(tmp_path)
    stamp = cached.stat().st_mtime_ns
    again = load_dataset(None)  # nothing named, no ./data: the built-in slice, from the cache
    assert cache_files(tmp_path) == [cached] and cached.stat().st_mtime_ns == stamp
    assert torch.equal(again.train.images, ds.train.images) and torch.equal(again.test.labels, ds.test.labels)
    assert again.classes == ds.classes and again.source == ds.source


def test_cache_follows_changes_to_the_data(tmp_path):
    root = write_folder(tmp_path / "set", SMALL)
    assert len(load_dataset(str(root)).train) == 9
    (old,) = cache_files(tmp_path)
    write_folder(root, {"train/dog/new.png": image_bytes(1, 0)})
    assert len(load_dataset(str(root)).train) == 10
    (new,) = cache_files(tmp_path)  # the stale entry was replaced, not kept beside it
    assert new != old


def test_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("RESNET_STUDIO_CACHE", str(tmp_path / "a-file" / "cache"))  # cannot be created
    check_small(load_dataset(str(write_folder(tmp_path / "set", SMALL))))


@pytest.mark.skipif(not SHARED_COPY.exists(), reason=f"{SHARED_COPY} is not on this machine")
def test_builtin_slice_is_remade_byte_for_byte(tmp_path):
    out = tmp_path / "slice.tar.gz"
    subprocess.run([sys.executable, "-m", "scripts.make_builtin_slice", str(SHARED_COPY), str(out)], cwd=ROOT,
                   check=True, capture_output=True)
    assert out.read_bytes() == BUILTIN_ARCHIVE.read_bytes()


@pytest.mark.skipif(not SHARED_COPY.exists(), reason=f"{SHARED_COPY} is not on this machine")
def test_full_jpeg_copy(tmp_path):
    ds = load_dataset(str(SHARED_COPY))
    assert ds.classes == CLASSES
    assert len(ds.train) == 50_000 and len(ds.test) == 10_000
    assert ds.train.labels.bincount().tolist() == [5000] * 10
    assert ds.test.labels.bincount().tolist() == [1000] * 10
    assert str(SHARED_COPY) in ds.source
    (cached,) = cache_files(tmp_path)
    start = time.perf_counter()
    again = load_dataset(str(SHARED_COPY))
    print(f"second load of the full JPEG copy: {time.perf_counter() - start:.2f} s")
    assert cache_files(tmp_path) == [cached] and torch.equal(again.test.images, ds.test.images)


# ---- where the data is -------------------------------------------------------------------------

def test_resolve_data(tmp_path, monkeypatch):
    assert resolve_data(None) == BUILTIN
    (tmp_path / "data").mkdir()
    assert resolve_data(None) == str(tmp_path / "data")
    monkeypatch.setenv("CIFAR10_DATA", "elsewhere.tar.gz")
    assert resolve_data(None) == str(tmp_path / "elsewhere.tar.gz")
    assert resolve_data("mine") == str(tmp_path / "mine")
    assert resolve_data(BUILTIN) == BUILTIN


def test_missing_data_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path / "nowhere"))
    message = str(e.value)
    assert str(tmp_path / "nowhere") in message and "no such file or folder" in message
    for hint in ("cifar-10-batches-py", "train/<class>/", ".zip", "CIFAR10_DATA", "cifar10-jpg.tar.gz", "builtin"):
        assert hint in message


def test_wrong_layout_says_what_it_found(tmp_path):
    write_folder(tmp_path / "flat", {"cat/1.png": image_bytes(0, 0), "dog/1.png": image_bytes(1, 0)})
    with pytest.raises(DataError, match=r"no train/<class>/ and test/<class>/ .*found images in cat/, dog/"):
        load_dataset(str(tmp_path / "flat"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes.txt: not a folder or a .tar.gz"):
        load_dataset(str(tmp_path / "notes.txt"))
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b" + os.urandom(500))
    with pytest.raises(DataError, match=r"broken.tar.gz: cannot read it"):
        load_dataset(str(tmp_path / "broken.tar.gz"))


def test_a_damaged_image_is_named(tmp_path):
    files = {**SMALL, "train/dog/bad.png": b"not a png at all"}
    with pytest.raises(DataError, match=r"set.zip: train/dog/bad.png: not an image.*remove or replace"):
        load_dataset(str(write_zip(tmp_path / "set.zip", files)))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX only")
def test_download_without_network_is_a_clear_error(tmp_path, offline):
    with pytest.raises(DataError, match=r"could not download CIFAR-10 into it"):
        load_dataset(str(tmp_path / "dl"), download=True)
    assert not (tmp_path / "dl").exists()  # no empty folder left to pass for a copy


# ---- torchvision's layout ----------------------------------------------------------------------

def write_torchvision_layout(root: Path, per_batch: int = 3, classes=CLASSES) -> dict[str, np.ndarray]:
    """cifar-10-batches-py/ as CIFAR-10's own pickles hold it, a few images per batch.

    The real files were pickled by Python 2, so torchvision's latin1 unpickling gives str keys
    ('data', 'labels', 'label_names'); pickled here by Python 3, str keys give the same dicts.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {"train": [], "test": []}
    for i, name in enumerate(["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                              "test_batch"]):
        pixels = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)  # rows: R plane, G plane, B plane
        labels = [(i + j) % len(classes) for j in range(per_batch)]
        batch = {"batch_label": f"batch {i}", "labels": labels, "data": pixels,
                 "filenames": [f"{j}.png" for j in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written["test" if name == "test_batch" else "train"].append((pixels, labels))
    meta = {"num_cases_per_batch": per_batch, "label_names": list(classes), "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {split: (np.concatenate([p for p, _ in parts]), sum((labels for _, labels in parts), []))
            for split, parts in written.items()}


def test_torchvision_layout(tmp_path):
    written = write_torchvision_layout(tmp_path / "tv")
    for path in (tmp_path / "tv", tmp_path / "tv" / "cifar-10-batches-py"):  # the root, or the folder itself
        ds = load_dataset(str(path))
        assert ds.classes == CLASSES
        assert "torchvision" in ds.source and str(tmp_path / "tv") in ds.source
        for split, (pixels, labels) in ((ds.train, written["train"]), (ds.test, written["test"])):
            assert split.images.is_contiguous()
            assert torch.equal(split.images, torch.from_numpy(pixels).view(-1, 3, 32, 32))
            assert split.labels.tolist() == labels
    assert len(ds.train) == 15 and len(ds.test) == 3


def test_incomplete_torchvision_layout(tmp_path):
    write_torchvision_layout(tmp_path / "tv")
    (tmp_path / "tv" / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py: not a complete copy .* data_batch_1 to data_batch_5"):
        load_dataset(str(tmp_path / "tv"))


# ---- class folders: folders and archives -------------------------------------------------------

def test_folder_zip_and_tar_load_identically(tmp_path):
    sources = [
        write_folder(tmp_path / "folder", SMALL),
        write_zip(tmp_path / "set.zip", SMALL),
        write_zip(tmp_path / "wrapped.zip", SMALL, top="cifar-mini/"),
        write_tar(tmp_path / "set.tar.gz", SMALL, top="cifar-mini/"),
        write_tar(tmp_path / "set.tgz", SMALL),
        write_tar(tmp_path / "set.tar", SMALL, mode="w"),
    ]
    first = load_dataset(str(sources[0]))
    check_small(first)
    assert first.source == f"{sources[0]} (class folders)"
    for source in sources[1:]:
        ds = load_dataset(str(source))
        assert ds.classes == first.classes, source
        for a, b in ((ds.train, first.train), (ds.test, first.test)):
            assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels), source


def test_unknown_test_class(tmp_path):
    files = {**SMALL, "test/zebra/000.png": image_bytes(0, 0)}
    with pytest.raises(DataError, match=r"test/ unknown class folder\(s\) zebra; expected .*cat, dog, frog"):
        load_dataset(str(write_folder(tmp_path / "set", files)))


def test_hostile_tar_members_are_skipped(tmp_path):
    path = tmp_path / "inner" / "hostile.tar.gz"
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as t:
        for name, content in SMALL.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            t.addfile(info, io.BytesIO(content))
        for name in ("../escaped.png", "train/cat/../../../escaped2.png", "/tmp/absolute-escape.png"):
            info = tarfile.TarInfo(name)
            info.size = len(SMALL["train/cat/000.png"])
            t.addfile(info, io.BytesIO(SMALL["train/cat/000.png"]))
        for kind, target in ((tarfile.SYMTYPE, "/etc/passwd"), (tarfile.LNKTYPE, "train/cat/000.png")):
            link = tarfile.TarInfo(f"train/cat/link{kind.decode()}.png")
            link.type, link.linkname = kind, target
            t.addfile(link)
        fifo = tarfile.TarInfo("train/cat/fifo.png")
        fifo.type = tarfile.FIFOTYPE
        t.addfile(fifo)
    before = set(tmp_path.rglob("*"))
    check_small(load_dataset(str(path)))  # exactly the 9 + 4 regular images
    assert not Path("/tmp/absolute-escape.png").exists()
    assert {p for p in tmp_path.rglob("*") if "cache" not in p.parts} == before  # nothing written beside it


def test_members_outside_the_archive_are_not_data(tmp_path):
    outside = {f"../{name}": content for name, content in SMALL.items()}
    outside.update({f"/abs/{name}": content for name, content in SMALL.items()})
    for path in (write_tar(tmp_path / "outside.tar.gz", outside), write_zip(tmp_path / "outside.zip", outside)):
        with pytest.raises(DataError, match="found no images in class folders"):
            load_dataset(str(path))


def test_hostile_zip_members_are_skipped(tmp_path):
    path = write_zip(tmp_path / "inner.zip", SMALL)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("../escaped.png", SMALL["train/cat/000.png"])
        link = zipfile.ZipInfo("train/cat/link.png")
        link.create_system = 3  # unix, so the mode bits below mean what they say
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/passwd")
    before = set(tmp_path.rglob("*"))
    check_small(load_dataset(str(path)))
    assert {p for p in tmp_path.rglob("*") if "cache" not in p.parts} == before


def test_archive_limits(tmp_path, monkeypatch):
    big = write_tar(tmp_path / "big.tar.gz", {**SMALL, "train/cat/huge.png": bytes(21_000_000)})
    with pytest.raises(DataError, match=r"train/cat/huge.png is 21 MB, over the 20 MB"):
        load_dataset(str(big))
    big_zip = write_zip(tmp_path / "big.zip", {**SMALL, "train/cat/huge.png": bytes(21_000_000)})
    with pytest.raises(DataError, match=r"huge.png is 21 MB"):
        load_dataset(str(big_zip))

    # a header that claims 3 GB: refused before a byte of it is read
    header = tarfile.TarInfo("train/cat/claims-3GB.png")
    header.size = 3 * 2**30
    (tmp_path / "claims.tar").write_bytes(header.tobuf())
    with pytest.raises(DataError, match=r"more than 2 GB uncompressed"):
        load_dataset(str(tmp_path / "claims.tar"))

    monkeypatch.setattr(archives, "MAX_MEMBERS", 10)  # rather than writing 200,001 members
    with pytest.raises(DataError, match=r"more than 10 files; refused"):
        load_dataset(str(write_tar(tmp_path / "many.tar.gz", SMALL)))


def with_end(archive: bytes, entries: int, directory_bytes: int, zip64: bool = False) -> bytes:
    """A zip whose end record (ZIP64's too, with `zip64`) declares `entries` members in a directory of
    `directory_bytes`, whatever its directory really holds."""
    end = archive.rindex(b"PK\x05\x06")
    fields = list(struct.unpack_from("<4s4H2LH", archive, end))  # ..., entries here and in all, size, offset, ...
    offset = fields[6]
    if not zip64:
        fields[3:6] = [entries, entries, directory_bytes]
        return archive[:end] + struct.pack("<4s4H2LH", *fields)
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, directory_bytes, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
    fields[3:7] = [0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF]  # "see the ZIP64 record"
    return archive[:end] + record + locator + struct.pack("<4s4H2LH", *fields)


@pytest.mark.parametrize("entries, directory_bytes, zip64, complaint", [
    (5_000_000, 5_000_000 * 46, True, "declares 5,000,000 files, more than the 200,000"),  # millions, as ZIP64 says
    (len(SMALL), 30_000_000, False, f"declares 30 MB for {len(SMALL)} files"),               # a directory far too big
    (150_000, 100_000_000, True, "declares 100 MB for 150,000 files"),                     # over the directory limit
])
def test_a_zip_declaring_too_much_is_refused_before_zipfile_reads_its_directory(tmp_path, monkeypatch, entries,
                                                                                directory_bytes, zip64, complaint):
    archive = with_end(write_zip(tmp_path / "real.zip", SMALL).read_bytes(), entries, directory_bytes, zip64)
    (tmp_path / "crafted.zip").write_bytes(archive)

    def never(*args, **kwargs):
        raise AssertionError("zipfile opened the archive")

    monkeypatch.setattr(archives.zipfile, "ZipFile", never)
    with pytest.raises(DataError, match=complaint):
        load_dataset(str(tmp_path / "crafted.zip"))


def test_a_zip_whose_directory_lies_about_a_members_size_is_refused_with_a_message(tmp_path):
    archive = bytearray(write_zip(tmp_path / "real.zip", SMALL).read_bytes())
    entry = archive.index(b"PK\x01\x02")  # the first member's directory entry: stored, its sizes at +20, +24
    struct.pack_into("<2L", archive, entry + 20, 10, 10)  # says 10 bytes; the image is longer
    (tmp_path / "shrunk.zip").write_bytes(archive)
    with pytest.raises(DataError, match=r"shrunk.zip: cannot read it \(Bad CRC-32"):
        load_dataset(str(tmp_path / "shrunk.zip"))
    struct.pack_into("<2L", archive, entry + 20, 30_000_000, 30_000_000)  # says 30 MB: refused unread
    (tmp_path / "swollen.zip").write_bytes(archive)
    with pytest.raises(DataError, match=r"is 30 MB, over the 20 MB allowed"):
        load_dataset(str(tmp_path / "swollen.zip"))


# ---- validation split --------------------------------------------------------------------------

def numbered_split(counts: list[int]) -> Split:
    """Image i is filled with i % 256 in channel 0 and i // 256 in channel 1, so it can be told apart."""
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    index = torch.arange(len(labels))
    images = torch.zeros(len(labels), 3, 32, 32, dtype=torch.uint8)
    images[:, 0] = (index % 256).view(-1, 1, 1).to(torch.uint8)
    images[:, 1] = (index // 256).view(-1, 1, 1).to(torch.uint8)
    return Split(images, labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))])


def ids(split: Split) -> list[int]:
    return (split.images[:, 0, 0, 0].long() + 256 * split.images[:, 1, 0, 0].long()).tolist()


def test_validation_split_is_stratified_and_deterministic():
    split = numbered_split([100, 200, 300])
    rest, val = split_validation(split, 0.2, seed=0)
    assert val.labels.bincount().tolist() == [20, 40, 60]
    assert rest.labels.bincount().tolist() == [80, 160, 240]
    assert sorted(ids(rest) + ids(val)) == list(range(600))  # disjoint, and nothing lost
    for part in (rest, val):  # each image keeps its own label
        assert torch.equal(split.labels[ids(part)], part.labels)

    rest2, val2 = split_validation(split, 0.2, seed=0)
    assert ids(val2) == ids(val) and ids(rest2) == ids(rest)
    _, val3 = split_validation(split, 0.2, seed=1)
    assert ids(val3) != ids(val)
    with pytest.raises(DataError, match="validation fraction"):
        split_validation(split, 1.0, seed=0)


# ---- custom test sets --------------------------------------------------------------------------

def test_custom_test_set_layouts(tmp_path):
    only_test = {name: content for name, content in SMALL.items() if name.startswith("test/")}
    bare = {name.removeprefix("test/"): content for name, content in only_test.items()}
    sources = [write_folder(tmp_path / "bare", bare),            # <class>/<image>
               write_zip(tmp_path / "bare.zip", bare, top="my-photos/"),
               write_tar(tmp_path / "test.tar.gz", only_test),   # test/<class>/<image>
               write_zip(tmp_path / "whole.zip", SMALL)]         # a whole dataset: its test split
    for source in sources:
        split, classes = load_class_folders(source)
        assert classes == ("cat", "dog", "frog"), source
        assert split.labels.tolist() == [0, 0, 1, 2], source
        assert split.images.shape == (4, 3, 32, 32), source


def test_custom_test_set_with_model_classes(tmp_path):
    root = write_folder(tmp_path / "mine", {"dog/a.jpg": image_bytes(0, 0), "cat/b.png": image_bytes(1, 1)})
    split, classes = load_class_folders(root, CLASSES)
    assert classes == CLASSES  # labels index the model's classes
    assert [classes[i] for i in split.labels] == ["cat", "dog"]

    write_folder(root, {"zebra/c.png": image_bytes(2, 2)})
    with pytest.raises(DataError, match=r"unknown class folder\(s\) zebra; expected folders named from: airplane"):
        load_class_folders(root, CLASSES)


def test_custom_test_set_needs_class_folders(tmp_path):
    write_folder(tmp_path / "loose", {"a.png": image_bytes(0, 0)})
    with pytest.raises(DataError, match=r"loose: expected one set of class folders"):
        load_class_folders(tmp_path / "loose")
