"""The ledger of a corpus built in pieces: what it lets a build write over, and what a resumed build redoes."""
import json

import pytest
import torch

from jala_ds.data.mds_pieces import PieceLedger, content_sha256, piece_runs
from jala_ds.torchrun_group import Ranks

ONE = Ranks(0, 1, torch.device("cpu"))
PLAN = {"build": "test", "settings": (1, 2)}


def test_pieces_cover_the_input_once_in_order():
    assert piece_runs(23, 10) == [range(0, 10), range(10, 20), range(20, 23)]
    assert piece_runs(0, 10) == []
    with pytest.raises(ValueError, match="at least 1"):
        piece_runs(5, 0)


def test_a_resumed_build_skips_the_finished_pieces(tmp_path):
    ledger = PieceLedger(tmp_path, PLAN, ONE, occupied=[], resume=True, overwrite=False)   # nothing to resume: begins
    assert ledger.mine(["a/piece00000", "a/piece00001", "b/piece00000"]) == ["a/piece00000", "a/piece00001",
                                                                            "b/piece00000"]
    ledger.finish("a/piece00001", {"clips": 3})
    (tmp_path / "a").mkdir()
    resumed = PieceLedger(tmp_path, PLAN, ONE, occupied=[tmp_path / "a"], resume=True, overwrite=False)
    assert resumed.mine(["a/piece00000", "a/piece00001", "b/piece00000"]) == ["a/piece00000", "b/piece00000"]
    assert resumed.tallies(["a/piece00001"]) == [{"clips": 3}]
    with pytest.raises(FileNotFoundError, match="a/piece00000.json: every rank must write --out on one shared"):
        resumed.tallies(["a/piece00000"])
    assert json.loads((tmp_path / "pieces/plan.json").read_text()) == {"build": "test", "settings": [1, 2]}


def test_what_a_build_may_write_over(tmp_path):
    (tmp_path / "lab").mkdir()
    with pytest.raises(FileExistsError, match="lab already holds data: pass --resume"):
        PieceLedger(tmp_path, PLAN, ONE, occupied=[tmp_path / "lab"], resume=False, overwrite=False)
    with pytest.raises(FileExistsError, match="plan.json is missing, so it is not a build that can resume"):
        PieceLedger(tmp_path, PLAN, ONE, occupied=[tmp_path / "lab"], resume=True, overwrite=False)
    PieceLedger(tmp_path, PLAN, ONE, occupied=[tmp_path / "lab"], resume=False, overwrite=True)
    assert not (tmp_path / "lab").exists() and (tmp_path / "pieces/plan.json").is_file()
    with pytest.raises(ValueError, match="begun with settings=\\[1, 2\\], this run has \\[1, 3\\]"):
        PieceLedger(tmp_path, {**PLAN, "settings": (1, 3)}, ONE, occupied=[], resume=True, overwrite=False)


def test_a_checkpoint_fingerprint_sees_contents_and_names(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt/weights.bin").write_bytes(b"\x00" * 10)
    before = content_sha256(tmp_path / "ckpt")
    assert content_sha256(tmp_path / "ckpt") == before
    (tmp_path / "ckpt/weights.bin").write_bytes(b"\x00" * 9 + b"\x01")
    assert content_sha256(tmp_path / "ckpt") != before
    (tmp_path / "ckpt/weights.bin").rename(tmp_path / "ckpt/other.bin")
    assert content_sha256(tmp_path / "ckpt") not in (before, content_sha256(tmp_path / "ckpt/other.bin"))
