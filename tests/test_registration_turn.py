"""Jobs on one node take turns registering streaming's shared memory: datasets built by several processes at the
same moment all get a prefix of their own (streaming alone collides: mosaicml/streaming#884), and a leader kept
from its turn goes on after waiting, saying so."""
import fcntl
import logging
import multiprocessing
import os

import pytest
from streaming import MDSWriter, StreamingDataset

from jala_ds.data.registration_turn import TURN_FILE, registration_turn

PROCESSES, DATASETS = 4, 6


@pytest.fixture(scope="module")
def mds(tmp_path_factory):
    out = tmp_path_factory.mktemp("turns") / "mds"
    with MDSWriter(out=str(out), columns={"x": "int"}) as writer:
        for x in range(8):
            writer.write({"x": x})
    return out


def build_datasets(mds, together, prefixes) -> None:
    """One single-process job that builds DATASETS datasets and keeps them until every job has built its own."""
    together.wait(60)
    kept = []
    for _ in range(DATASETS):
        with registration_turn():
            kept.append(StreamingDataset(local=str(mds), batch_size=1))
        prefixes.append(kept[-1]._shm_prefix_int)
    together.wait(60)  # a job that ended would free its prefixes for the next one


def jobs_starting_together(mds, results) -> None:
    """PROCESSES jobs forked from a fresh process: a test worker's own process group would be inherited."""
    forked = multiprocessing.get_context("fork")  # no re-import: the jobs start at once
    with forked.Manager() as manager:
        together, prefixes = manager.Barrier(PROCESSES), manager.list()
        jobs = [forked.Process(target=build_datasets, args=(mds, together, prefixes)) for _ in range(PROCESSES)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join(timeout=300)
        results.put(([job.exitcode for job in jobs], list(prefixes)))


def test_jobs_starting_together_each_get_their_own_prefix(mds):
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    fresh = spawn.Process(target=jobs_starting_together, args=(mds, results))
    fresh.start()
    exitcodes, prefixes = results.get(timeout=600)
    fresh.join()
    assert exitcodes == [0] * PROCESSES  # a collision raises FileExistsError
    assert len(set(prefixes)) == PROCESSES * DATASETS


def test_a_leader_kept_from_its_turn_goes_on_and_says_so(monkeypatch, caplog):
    monkeypatch.setenv("LOCAL_RANK", "0")
    other_job = os.open(TURN_FILE, os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(other_job, fcntl.LOCK_EX)
    try:
        with caplog.at_level(logging.WARNING), registration_turn(wait=0.2):
            pass
        assert "without the node's turn" in caplog.text

        caplog.clear()
        monkeypatch.setenv("LOCAL_RANK", "1")  # only leaders take the turn: the node's other ranks never wait
        with caplog.at_level(logging.WARNING), registration_turn(wait=0.2):
            pass
        assert "without the node's turn" not in caplog.text
    finally:
        os.close(other_job)
