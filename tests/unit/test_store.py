"""The outputs folder: A1111 names and layout, never an overwrite, clear errors when disk says no."""

import errno
import os
import threading
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from app.errors import OutputError
from app.images import store as store_module
from app.images.metadata import read_parameters
from app.images.store import OutputStore

DAY = datetime(2024, 3, 9, 14, 30)


def fixed_clock() -> datetime:
    return DAY


def small_image(color=(10, 120, 200)) -> Image.Image:
    return Image.new("RGB", (16, 16), color)


def files_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_saves_under_category_and_date_with_a1111_numbering(tmp_path):
    store = OutputStore(tmp_path, clock=fixed_clock)
    first = store.save(small_image(), "cat\nSteps: 1, Sampler: Euler, Seed: 7", "txt2img-images", 7)
    second = store.save(small_image(), "dog\nSteps: 1, Sampler: Euler, Seed: 8", "txt2img-images", 8)
    third = store.save(small_image(), "eel", "txt2img-images", 4294967295)

    folder = tmp_path / "txt2img-images" / "2024-03-09"
    assert first == folder / "00000-7.png"
    assert second == folder / "00001-8.png"
    assert third == folder / "00002-4294967295.png"
    assert files_in(folder) == ["00000-7.png", "00001-8.png", "00002-4294967295.png"]


def test_each_category_and_day_counts_on_its_own(tmp_path):
    days = iter([datetime(2024, 1, 1), datetime(2024, 1, 1), datetime(2024, 1, 2)])
    store = OutputStore(tmp_path, clock=lambda: next(days))
    assert store.save(small_image(), "a", "txt2img-images", 1).name == "00000-1.png"
    assert store.save(small_image(), "b", "img2img-images", 2) == (
        tmp_path / "img2img-images" / "2024-01-01" / "00000-2.png"
    )
    assert store.save(small_image(), "c", "txt2img-images", 3) == (
        tmp_path / "txt2img-images" / "2024-01-02" / "00000-3.png"
    )


def test_numbering_continues_after_the_highest_existing_file(tmp_path):
    folder = tmp_path / "extras-images" / "2024-03-09"
    folder.mkdir(parents=True)
    (folder / "00004-99-a prompt.png").write_bytes(b"from A1111")
    (folder / "notes.txt").write_text("not numbered")
    saved = OutputStore(tmp_path, clock=fixed_clock).save(small_image(), "x", "extras-images", 5)
    assert saved.name == "00005-5.png"


def test_an_existing_file_is_never_overwritten(tmp_path, monkeypatch):
    store = OutputStore(tmp_path, clock=fixed_clock)
    folder = tmp_path / "txt2img-images" / "2024-03-09"
    folder.mkdir(parents=True)
    # Another writer takes the name this store is about to pick, after the store scanned the
    # folder: the file must survive and the image go to the next number.
    monkeypatch.setattr(store_module, "next_sequence_number", lambda _folder: 0)
    (folder / "00000-42.png").write_bytes(b"someone else's image")

    saved = store.save(small_image(), "mine", "txt2img-images", 42)

    assert saved == folder / "00001-42.png"
    assert (folder / "00000-42.png").read_bytes() == b"someone else's image"
    assert read_parameters(Image.open(saved)) == "mine"


def test_parameters_are_in_the_saved_png(tmp_path):
    parameters = "猫 on a roof 🐈\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 3"
    path = OutputStore(tmp_path, clock=fixed_clock).save(small_image(), parameters, "txt2img-images", 3)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert read_parameters(image) == parameters
        assert image.convert("RGB").getpixel((0, 0)) == (10, 120, 200)


def test_concurrent_saves_get_distinct_complete_files(tmp_path):
    store = OutputStore(tmp_path, clock=fixed_clock)
    start = threading.Barrier(8)
    saved: dict[int, Path] = {}
    failures: list[BaseException] = []

    def save(index: int) -> None:
        try:
            start.wait()
            saved[index] = store.save(
                small_image((index * 30, 0, 0)), f"prompt {index}", "img2img-images", 1000 + index
            )
        except BaseException as error:  # surfaced below; a thread cannot fail the test itself
            failures.append(error)

    threads = [threading.Thread(target=save, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    assert len(set(saved.values())) == 8
    folder = tmp_path / "img2img-images" / "2024-03-09"
    assert len(files_in(folder)) == 8  # and no temp files left over
    assert sorted(path.name[:5] for path in saved.values()) == [f"{n:05}" for n in range(8)]
    for index, path in saved.items():
        assert path.name.endswith(f"-{1000 + index}.png")
        with Image.open(path) as image:
            assert read_parameters(image) == f"prompt {index}"
            assert image.getpixel((0, 0)) == (index * 30, 0, 0)


def test_unknown_category_is_a_programming_error(tmp_path):
    store = OutputStore(tmp_path, clock=fixed_clock)
    with pytest.raises(ValueError):
        store.save(small_image(), "x", "outputs", 1)
    with pytest.raises(ValueError):
        store.recent("../etc")


def test_unwritable_root_raises_output_error(tmp_path):
    root = tmp_path / "not-a-folder"
    root.write_text("a file where the outputs folder should be")
    with pytest.raises(OutputError) as caught:
        OutputStore(root, clock=fixed_clock).save(small_image(), "x", "txt2img-images", 1)
    assert str(root) in caught.value.message
    assert list(tmp_path.iterdir()) == [root]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_root_raises_output_error(tmp_path):
    root = tmp_path / "outputs"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(OutputError):
            OutputStore(root, clock=fixed_clock).save(small_image(), "x", "txt2img-images", 1)
    finally:
        root.chmod(0o700)
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("failing", ["fsync", "link"])
def test_a_failed_write_raises_output_error_and_leaves_no_temp_file(tmp_path, monkeypatch, failing):
    def disk_full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.os, failing, disk_full)
    with pytest.raises(OutputError) as caught:
        OutputStore(tmp_path, clock=fixed_clock).save(small_image(), "x", "txt2img-images", 1)

    folder = tmp_path / "txt2img-images" / "2024-03-09"
    assert str(folder) in caught.value.message
    assert "disk space" in caught.value.message
    assert files_in(folder) == []


def test_works_without_hard_links(tmp_path, monkeypatch):
    def no_links(*_args, **_kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(store_module.os, "link", no_links)
    store = OutputStore(tmp_path, clock=fixed_clock)
    folder = tmp_path / "txt2img-images" / "2024-03-09"
    folder.mkdir(parents=True)
    (folder / "00000-1.png").write_bytes(b"keep me")
    monkeypatch.setattr(store_module, "next_sequence_number", lambda _folder: 0)

    saved = store.save(small_image(), "fallback", "txt2img-images", 1)

    assert saved == folder / "00001-1.png"
    assert (folder / "00000-1.png").read_bytes() == b"keep me"
    assert read_parameters(Image.open(saved)) == "fallback"
    assert files_in(folder) == ["00000-1.png", "00001-1.png"]


def test_recent_lists_newest_first_and_respects_limit(tmp_path):
    days = iter([datetime(2024, 1, 1), datetime(2024, 1, 2), datetime(2024, 1, 2), datetime(2024, 1, 2)])
    store = OutputStore(tmp_path, clock=lambda: next(days))
    older = store.save(small_image(), "a", "txt2img-images", 1)
    first_today = store.save(small_image(), "b", "txt2img-images", 2)
    second_today = store.save(small_image(), "c", "txt2img-images", 3)
    other_category = store.save(small_image(), "d", "extras-images", 4)
    # Same clock tick is possible on coarse filesystems: the numbers must still order them.
    stamp = (1_700_000_000, 1_700_000_000)
    os.utime(first_today, stamp)
    os.utime(second_today, stamp)

    assert store.recent("txt2img-images") == [second_today, first_today, older]
    assert store.recent("txt2img-images", limit=2) == [second_today, first_today]
    assert store.recent("extras-images") == [other_category]
    assert set(store.recent()) == {older, first_today, second_today, other_category}
    assert store.recent()[-1] == older
    assert store.recent("img2img-images") == []
    assert store.recent(limit=0) == []
