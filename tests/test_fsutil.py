import pytest

from imvedit.errors import UsageError
from imvedit.fsutil import atomic_path, check_output_path, staged_dir


def test_staged_dir_appears_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), staged_dir(dest) as tmp:
        (tmp / "half.txt").write_text("x")
        raise KeyboardInterrupt
    assert not dest.exists() and not list(tmp_path.iterdir())
    with staged_dir(dest) as tmp:
        (tmp / "done.txt").write_text("ok")
    assert (dest / "done.txt").read_text() == "ok" and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    dest = tmp_path / "out.mp4"
    dest.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert dest.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_check_output_path(tmp_path):
    src = tmp_path / "in.mp4"
    src.write_text("x")
    with pytest.raises(UsageError, match="is the input"):
        check_output_path(src, [src], overwrite=True)
    with pytest.raises(UsageError, match="already exists"):
        check_output_path(src, [])
    with pytest.raises(UsageError, match="does not exist"):
        check_output_path(tmp_path / "nowhere" / "o.mp4", [])
    assert check_output_path(tmp_path / "o.mp4", [src]) == tmp_path / "o.mp4"


def test_atomic_path_gives_the_file_the_usual_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


def test_temporaries_left_by_a_killed_run_are_removed_on_the_next_write(tmp_path):
    from imvedit.fsutil import atomic_path

    stale = [tmp_path / ".clip.ab12_xyz.mp4", tmp_path / ".clip.ab12_xyz.video.mp4"]
    kept = [
        tmp_path / ".clip.notes.mp4",
        tmp_path / ".clip.ab12_xyz.mkv",
        tmp_path / ".other.ab12_xyz.mp4",
        tmp_path / "clip.txt",
    ]
    for p in stale + kept:
        p.write_text("x")
    with atomic_path(tmp_path / "clip.mp4") as tmp:
        tmp.write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["clip.mp4"] + [p.name for p in kept])
