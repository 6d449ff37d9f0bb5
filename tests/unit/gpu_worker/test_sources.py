"""Input collection and archive safety."""

import io
import zipfile

import pytest

from dicomstl.errors import ArchiveError, NoImagesError
from gpu_worker.sources import collect_sources, read_zip


def test_folder_is_searched_recursively_in_a_stable_order(tmp_path):
    (tmp_path / "b" / "c").mkdir(parents=True)
    for name in ("b/c/2", "b/1", "a"):
        (tmp_path / name).write_bytes(b"x")
    names = [s.name for s in collect_sources([tmp_path])]
    assert sorted(names) == ["1", "2", "a"] and len(names) == 3
    assert names == [s.name for s in collect_sources([tmp_path])]


def test_missing_input_and_empty_folder_are_clear_errors(tmp_path):
    with pytest.raises(NoImagesError, match="not found"):
        collect_sources([tmp_path / "nope"])
    with pytest.raises(NoImagesError, match="no files"):
        collect_sources([tmp_path])


def test_zip_members_are_read_in_memory(tmp_path):
    path = tmp_path / "upload.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("series/I1", b"abc" * 10)
        z.writestr("I2", b"def")
    sources = collect_sources([path])
    assert sorted((s.name, s.data) for s in sources) == [("I1", b"abc" * 10), ("I2", b"def")]
    assert isinstance(sources[0].open(), io.BytesIO)


def test_zip_bomb_is_refused_before_inflating(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros", b"\0" * (20 * 1024**2))
    with pytest.raises(ArchiveError, match="zip bomb"):
        list(read_zip(path))


def test_total_size_limit(tmp_path):
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("a", b"x" * 2000)
    with pytest.raises(ArchiveError, match="over the limit"):
        list(read_zip(path, max_bytes=1000))


def test_corrupt_zip_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 50)
    with pytest.raises(ArchiveError, match="not a readable zip"):
        collect_sources([path])


@pytest.mark.parametrize("name", ["../../evil/I1.dcm", "/etc/dicomstl-test", "C:\\x\\I1"])
def test_unsafe_entry_names_are_refused(tmp_path, name):
    path = tmp_path / "slip.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(name, b"x")
    with pytest.raises(ArchiveError, match="unsafe path"):
        list(read_zip(path))


def test_real_zip_slip_and_zip_bomb_files(shared_dicom, tmp_path):
    broken = shared_dicom / "broken"
    with pytest.raises(ArchiveError, match="unsafe path"):
        collect_sources([broken / "zip-slip.zip"])
    with pytest.raises(ArchiveError, match="zip bomb"):
        collect_sources([broken / "zip-bomb.zip"])
    assert not (tmp_path.parent / "evil").exists()
