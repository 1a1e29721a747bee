"""A checkpoint folder is replaced only by a complete successor: a crash mid-save leaves the previous one."""
import pytest

from jala_ds.motion.checkpoint_folder import written_whole


def test_a_completed_save_replaces_the_folder(tmp_path):
    out = tmp_path / "ckpt"
    with written_whole(out) as staging:
        (staging / "weights").write_text("first")
    with written_whole(out) as staging:
        (staging / "weights").write_text("second")
    assert (out / "weights").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_save_that_fails_leaves_the_previous_checkpoint(tmp_path):
    out = tmp_path / "ckpt"
    with written_whole(out) as staging:
        (staging / "weights").write_text("first")
    with pytest.raises(RuntimeError, match="disk full"), written_whole(out) as staging:
        (staging / "weights").write_text("half")
        raise RuntimeError("disk full")
    assert (out / "weights").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
