"""Safe output: special files refused and untouched, ordinary permissions, atomic multi-file publish."""

import os
import socket
import stat

import numpy as np
import pytest

from landscape.files import OutputPathError, atomic_write, check_output_dir, check_output_file, publish


def test_fifo_symlink_and_folder_are_refused_and_untouched(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = tmp_path / "target.csv"
    target.write_text("keep")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    folder = tmp_path / "folder"
    folder.mkdir()
    for path, kind in [(fifo, "FIFO"), (link, "symbolic link"), (folder, "folder")]:
        with pytest.raises(OutputPathError, match=kind):
            atomic_write(path, "x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert target.read_text() == "keep" and link.is_symlink()


def test_socket_refused(tmp_path):
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        with pytest.raises(OutputPathError, match="socket"):
            check_output_file(path)


def test_device_node_refused():
    with pytest.raises(OutputPathError, match="character device"):
        check_output_file("/dev/null")


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_write(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_publish_writes_all_and_callables(tmp_path):
    a, b = tmp_path / "r.csv", tmp_path / "r.meta.json"
    publish({a: "x,y\n1,2\n", b: lambda p: p.write_text("{}")})
    assert a.read_text() == "x,y\n1,2\n" and b.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.meta.json"]


def test_writer_that_writes_elsewhere_fails_and_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="wrote nothing"):
        atomic_write(tmp_path / "g.npz", lambda p: np.savez(str(p) + ".other", x=np.zeros(1)))
    assert not (tmp_path / "g.npz").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp.npz")]  # our temporary is gone


def test_numpy_savez_writes_the_temporary_itself(tmp_path):
    """np.savez appends ".npz" to a path that does not end so: the docstring's own example wrote a stray
    ``.a.npz.XXXX.tmp.npz`` and failed with "wrote nothing"; temporaries now end as their destination."""
    atomic_write(tmp_path / "a.npz", lambda p: np.savez(p, x=np.arange(3)))
    assert np.load(tmp_path / "a.npz")["x"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]


def test_a_destination_turned_special_while_writing_replaces_nothing(tmp_path):
    """The check ran inside the replace loop: one.txt was already replaced when two.txt's error said "nothing
    replaced"."""
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    one.write_text("old1")
    two.write_text("old2")

    def becomes_a_link(path):
        path.write_text("new2")
        two.unlink()
        two.symlink_to(one)

    with pytest.raises(OutputPathError, match="nothing replaced"):
        publish({one: "new1", two: becomes_a_link})
    assert one.read_text() == "old1" and two.is_symlink()


def test_failed_writer_keeps_old_file(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")

    def boom(p):
        p.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, boom)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_folder_checks(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(OutputPathError, match="expected a folder"):
        check_output_dir(f)
    with pytest.raises(OutputPathError, match="parent"):
        check_output_dir(f / "sub")
    with pytest.raises(OutputPathError, match="longer than"):
        check_output_file(tmp_path / ("n" * 300))
    assert check_output_dir(tmp_path / "new" / "deep").is_dir()
