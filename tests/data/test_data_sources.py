"""core.data.sources.suggested_data: the CIFAR-10 copy the Evaluate page offers where it asks for a path (the page
held the shared copy's place itself until issue 32)."""
from pathlib import Path

import pytest

import core.data.sources as sources
from tests.helpers import ROOT

SHARED_COPY = sources.SHARED_COPY  # as the module has it, before a test puts it elsewhere


@pytest.fixture(autouse=True)
def nothing_set_up(tmp_path, monkeypatch):
    """No CIFAR10_DATA, no ./data, no shared copy: each test sets up what it is about."""
    monkeypatch.delenv("CIFAR10_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sources, "SHARED_COPY", tmp_path / "shared" / "cifar10" / "cifar10-jpg.tar.gz")


def test_the_shared_copy_is_the_one_beside_the_repo_and_the_help_names_it():
    assert ROOT.parent / "shared" / "cifar10" / "cifar10-jpg.tar.gz" == SHARED_COPY
    assert sources.SHARED_COPY_NAME in sources.HOW_TO_GET_DATA


def test_nothing_to_offer_without_a_copy():
    assert sources.suggested_data() == ""


def test_the_shared_copy_is_offered_when_it_is_there(tmp_path):
    sources.SHARED_COPY.parent.mkdir(parents=True)
    sources.SHARED_COPY.write_bytes(b"an archive")
    assert sources.suggested_data() == str(sources.SHARED_COPY)


def test_a_copy_set_up_for_the_studio_comes_before_the_shared_one(tmp_path, monkeypatch):
    sources.SHARED_COPY.parent.mkdir(parents=True)
    sources.SHARED_COPY.write_bytes(b"an archive")
    (tmp_path / "data").mkdir()
    assert sources.suggested_data() == str(tmp_path / "data")  # ./data, as an absolute path
    monkeypatch.setenv("CIFAR10_DATA", "~/cifar")
    assert sources.suggested_data() == str(Path("~/cifar").expanduser().resolve())


@pytest.mark.parametrize("source, images, name", [
    ("/home/ada/data/cifar10-jpg.tar.gz (class folders)", 10_000,
     "CIFAR-10, JPEG copy (quality 75, 4:2:0): its 10,000 test images, cifar10-jpg.tar.gz"),
    ("/home/ada/photos", 12, "CIFAR-10 as class folders (photos): its 12 test images"),
])
def test_a_test_split_is_named_in_words_without_the_machines_paths(source, images, name):
    assert sources.test_set_name(source, images) == name and "/home/ada" not in name
