"""Atomic writes: what the rename lands on (symlinks, FIFOs, devices, folders) and the permissions it leaves."""

import os
import stat
import threading

import pytest

from searchr3.io import OutputPathError, atomic_directory, atomic_write_bytes, atomic_write_json


@pytest.fixture()
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_files_and_folders_honour_the_umask(tmp_path, umask022):
    atomic_write_bytes(tmp_path / "f.bin", b"x")
    assert stat.S_IMODE(os.stat(tmp_path / "f.bin").st_mode) == 0o644  # not mkstemp's 0600
    with atomic_directory(tmp_path / "d") as tmp:
        atomic_write_json(tmp / "meta.json", {"a": 1})
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o755  # not mkdtemp's 0700
    assert stat.S_IMODE(os.stat(tmp_path / "d" / "meta.json").st_mode) == 0o644
    os.umask(0o077)
    atomic_write_bytes(tmp_path / "private.bin", b"x")
    assert stat.S_IMODE(os.stat(tmp_path / "private.bin").st_mode) == 0o600


def test_a_replaced_file_keeps_its_mode(tmp_path, umask022):
    (tmp_path / "f").write_bytes(b"old")
    os.chmod(tmp_path / "f", 0o640)
    atomic_write_bytes(tmp_path / "f", b"new")
    assert (tmp_path / "f").read_bytes() == b"new" and stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == 0o640


def test_symlink_target_is_replaced_and_the_link_stays(tmp_path):
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to("real.json")
    atomic_write_json(tmp_path / "link.json", {"new": True})
    assert (tmp_path / "link.json").is_symlink() and '"new": true' in (tmp_path / "real.json").read_text()
    (tmp_path / "real_dir").mkdir()
    (tmp_path / "real_dir" / "stale").write_text("x")
    (tmp_path / "dir_link").symlink_to("real_dir")
    with atomic_directory(tmp_path / "dir_link") as tmp:
        (tmp / "fresh").write_text("y")
    assert (tmp_path / "dir_link").is_symlink() and sorted(os.listdir(tmp_path / "real_dir")) == ["fresh"]


def test_fifo_and_character_device_are_written_into_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    atomic_write_bytes(fifo, b"through the pipe")
    reader.join(timeout=10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    atomic_write_json("/dev/null", {"x": 1})
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    (tmp_path / "null_link").symlink_to("/dev/null")
    atomic_write_bytes(tmp_path / "null_link", b"x")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and (tmp_path / "null_link").is_symlink()


def test_folder_socket_or_file_in_the_way_is_refused(tmp_path):
    import socket

    (tmp_path / "adir").mkdir()
    with pytest.raises(OutputPathError, match="is a folder, not a regular file"):
        atomic_write_bytes(tmp_path / "adir", b"x")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s"))
    try:
        with pytest.raises(OutputPathError, match="is a socket"):
            atomic_write_bytes(tmp_path / "s", b"x")
    finally:
        sock.close()
    (tmp_path / "afile").write_text("keep me")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        with atomic_directory(tmp_path / "afile"):
            pass
    assert (tmp_path / "afile").read_text() == "keep me"
    with pytest.raises(OutputPathError, match="character device, not a folder"):
        with atomic_directory("/dev/null"):
            pass
