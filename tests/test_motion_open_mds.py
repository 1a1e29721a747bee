"""`open_mds`, how the motion jobs and corpus copies read a converted corpus: every record by index, wherever the
process sits in a torchrun world, and a corrupted shard named when first read."""
import shutil

import pytest
from streaming import LocalDataset

from jala_ds.data.shard_check import CorruptShardError
from jala_ds.motion.pose_corpus import PoseCorpus, open_mds


def test_every_record_on_every_rank_of_a_torchrun_world(tiny_corpus, monkeypatch):
    # streaming's StreamingDataset gives one rank's share of an epoch as its len: rank 1 of 2 would have read
    # half the clips' indices (and the corpus copies and pose batches skipped the rest).
    whole = {subset: len(LocalDataset(local=str(tiny_corpus.mds / subset))) for subset in ("lab", "wild")}
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    for subset, clips in whole.items():
        dataset = open_mds(tiny_corpus.mds / subset)
        assert len(dataset) == clips
        assert [dataset[i]["clip_id"] for i in range(clips)] == \
            [LocalDataset(local=str(tiny_corpus.mds / subset))[i]["clip_id"] for i in range(clips)]
    assert len(PoseCorpus(tiny_corpus.mds)) == sum(whole.values())


def test_a_corrupted_shard_is_named_when_first_read(tiny_corpus, tmp_path):
    shutil.copytree(tiny_corpus.mds / "lab", tmp_path / "lab")
    shard = tmp_path / "lab/piece00000/shard.00001.mds"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    dataset = open_mds(tmp_path / "lab")
    assert dataset[0]["labeled"] in (0, 1)          # shard 0 is intact
    with pytest.raises(CorruptShardError, match=r"lab/piece00000/shard\.00001\.mds is corrupted"):
        for i in range(len(dataset)):
            dataset[i]


def test_a_folder_without_an_index_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no index.json.*jala data convert"):
        open_mds(tmp_path)
