"""Reading an unlabelled test set (core.data.testsets): both course pickle layouts, .npy/.npz, folders and zips of
images, in the file's order; a pickle that would run code is refused before it runs; each bad input gets its line."""
import hashlib
import io
import pickle
import zipfile

import numpy as np
import pytest
from PIL import Image

from core.data.datasets import load_dataset
from core.data.sources import DataError
from core.data.testsets import read_unlabelled, read_unlabelled_bytes
from tests.helpers import Payload


@pytest.fixture(scope="module")
def slice_test() -> np.ndarray:
    """The built-in slice's test images, uint8 (N, 3, 32, 32)."""
    return load_dataset("builtin").test.images.numpy()


def course_pickle(images: np.ndarray, ids, layout: str, keys: type = bytes, protocol: int = 4) -> bytes:
    """The course's file: Spring 2024's (N, 3072) CIFAR rows or Spring 2025's (N, 32, 32, 3)."""
    data = images.reshape(len(images), -1) if layout == "2024" else images.transpose(0, 2, 3, 1)
    key = (lambda k: k.encode()) if keys is bytes else str
    return pickle.dumps({key("data"): np.ascontiguousarray(data), key("ids"): ids}, protocol=protocol)


@pytest.mark.parametrize("layout", ["2024", "2025"])
@pytest.mark.parametrize("keys, protocol", [(bytes, 2), (bytes, 5), (str, 4), (str, 0)])
def test_both_course_layouts_read_back_the_images_and_ids_in_the_files_order(slice_test, layout, keys, protocol):
    ids = np.random.default_rng(1).permutation(len(slice_test)) + 1
    data = course_pickle(slice_test, ids, layout, keys, protocol)
    read = read_unlabelled_bytes("cifar_test_nolabel.pkl", data)
    assert read.ids == [str(i) for i in ids]
    assert read.images.dtype == np.uint8 and np.array_equal(read.images, slice_test)
    assert read.sha256 == hashlib.sha256(data).hexdigest()
    assert ("3072" in read.layout) == (layout == "2024")


def test_npy_and_npz_in_either_channel_order(slice_test, tmp_path):
    for order, array in (("last", slice_test.transpose(0, 2, 3, 1)), ("first", slice_test)):
        np.save(tmp_path / f"{order}.npy", array)
        read = read_unlabelled(tmp_path / f"{order}.npy")
        assert np.array_equal(read.images, slice_test) and read.ids == [str(i) for i in range(len(slice_test))]
    ids = np.array([f"img-{i}" for i in range(len(slice_test))])
    np.savez(tmp_path / "set.npz", data=slice_test.transpose(0, 2, 3, 1), ids=ids)
    read = read_unlabelled(tmp_path / "set.npz")
    assert read.ids == ids.tolist() and np.array_equal(read.images, slice_test)


def test_a_folder_or_zip_of_images_is_named_by_file_stem(slice_test, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in (10, 2, 1):  # numbered files come in number order, not 1, 10, 2
        Image.fromarray(slice_test[i].transpose(1, 2, 0)).save(folder / f"{i}.png")
    read = read_unlabelled(folder)
    assert read.ids == ["1", "2", "10"] and np.array_equal(read.images, slice_test[[1, 2, 10]])
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("b", "a"):  # an archive's own order
            z.write(folder / ("10.png" if name == "b" else "2.png"), f"test/{name}.png")
    read = read_unlabelled_bytes("upload.zip", archive.getvalue())
    assert read.ids == ["b", "a"] and np.array_equal(read.images, slice_test[[10, 2]])


class Stranger:
    pass


def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path, slice_test):
    marker = tmp_path / "payload-ran"
    hostile = pickle.dumps({b"data": Payload(marker), b"ids": [1]})
    assert not marker.exists()
    with pytest.raises(DataError, match=r"^evil\.pkl: it asks to load posix\.system, .*refused unrun"):
        read_unlabelled_bytes("evil.pkl", hostile)
    assert not marker.exists()
    (tmp_path / "evil.pkl").write_bytes(hostile)
    with pytest.raises(DataError, match="posix.system"):
        read_unlabelled(tmp_path / "evil.pkl")
    assert not marker.exists()
    pickle.loads(hostile)  # the check above means something: unpickled plainly, it does run
    assert marker.exists()
    with pytest.raises(DataError, match=r"it asks to load tests\.data\.test_testsets\.Stranger"):
        read_unlabelled_bytes("class.pkl", pickle.dumps({b"data": Stranger()}))


@pytest.mark.parametrize("content, message", [
    ({b"data": np.zeros((3, 3072), np.float32), b"ids": [1, 2, 3]}, "its images are float32, not uint8"),
    ({b"data": np.zeros((3, 32, 16, 3), np.uint8), b"ids": [1, 2, 3]}, r"its images have shape \(3, 32, 16, 3\)"),
    ({b"data": np.zeros((3, 3072), np.uint8), b"ids": [1, 2]}, "it has 2 IDs for 3 images"),
    ({b"data": np.zeros((3, 3072), np.uint8), b"ids": [1, 2, 1]}, r"1 duplicate IDs \(e\.g\. 1\)"),
    ({b"data": np.zeros((0, 3072), np.uint8), b"ids": []}, "it holds 0 images"),
    ({b"images": np.zeros((3, 3072), np.uint8)}, "a pickled dict without a `data` entry"),
    ([1, 2, 3], "a pickle of a list, not the course's dict"),
])
def test_each_bad_pickle_gets_one_clear_line(content, message):
    with pytest.raises(DataError, match=f"^t.pkl: {message}") as error:
        read_unlabelled_bytes("t.pkl", pickle.dumps(content))
    assert "\n" not in str(error.value)


def test_other_bad_inputs_get_their_line(tmp_path):
    cases = {"empty.pkl": (b"", "the file is empty"), "notes.pkl": (b"just text", "not a readable pickle"),
             "none.zip": (zipfile_with({"readme.txt": b"hi"}), "it holds 0 images"),
             "twice.zip": (zipfile_with({"a/1.png": png(), "b/1.png": png()}), "1 duplicate IDs")}
    for name, (data, message) in cases.items():
        with pytest.raises(DataError, match=f"^{name}: {message}"):
            read_unlabelled_bytes(name, data)
    with pytest.raises(DataError, match="no such file or folder"):
        read_unlabelled(tmp_path / "missing.pkl")


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32)).save(out, format="PNG")
    return out.getvalue()


def zipfile_with(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def test_a_pickle_numpy_1_wrote_reads_too(slice_test):
    """numpy 1.x names numpy.core.multiarray where 2.x names numpy._core.multiarray (the course's files are older)."""
    data = course_pickle(slice_test[:5], [5, 4, 3, 2, 1], "2024", protocol=2)
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert old != data
    read = read_unlabelled_bytes("cifar_test_nolabels.pkl", old)
    assert read.ids == ["5", "4", "3", "2", "1"] and np.array_equal(read.images, slice_test[:5])
