"""Job start's shared-memory clean-up: streaming blocks no process holds are removed; blocks a live process has
open or mapped, in this process or another, stay, and a live streaming loader keeps working through it."""
import mmap
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from streaming import MDSWriter, StreamingDataset
from torch.utils.data import DataLoader

from jala_ds.data.orphaned_memory import SHARED_MEMORY, remove_orphaned_streaming_memory
from jala_ds.data.registration_turn import registration_turn

# Prefixes far above any a job on this machine reaches, so that tests running beside this one are not touched.
ORPHAN, OPEN, MAPPED, OTHER_PROCESS = "999990_locals", "999991_barrier", "999992_shard_states", "999993_epoch_data"
NOT_STREAMINGS = "999994_notes"


def make_block(name: str) -> Path:
    path = SHARED_MEMORY / name
    path.write_bytes(bytes(64))
    return path


@pytest.fixture
def blocks():
    names = [ORPHAN, OPEN, MAPPED, OTHER_PROCESS, NOT_STREAMINGS]
    yield {name: SHARED_MEMORY / name for name in names}
    for name in names:
        (SHARED_MEMORY / name).unlink(missing_ok=True)


def test_only_blocks_that_no_live_process_holds_are_removed(blocks):
    make_block(ORPHAN)
    make_block(NOT_STREAMINGS)
    held_open = os.open(make_block(OPEN), os.O_RDWR)  # open, not mapped: only /proc/<pid>/fd shows it
    fd = os.open(make_block(MAPPED), os.O_RDWR)
    held_mapped = mmap.mmap(fd, 64)  # mapped, its descriptor closed: only /proc/<pid>/maps shows it
    os.close(fd)
    make_block(OTHER_PROCESS)
    holder = subprocess.Popen([sys.executable, "-c", f"import sys; f = open('{blocks[OTHER_PROCESS]}'); "
                               "print('holding', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "holding\n"

    removed = remove_orphaned_streaming_memory()
    assert ORPHAN in removed and not blocks[ORPHAN].exists()
    assert {OPEN, MAPPED, OTHER_PROCESS}.isdisjoint(removed)
    assert all(blocks[name].exists() for name in (OPEN, MAPPED, OTHER_PROCESS, NOT_STREAMINGS))

    holder.send_signal(signal.SIGKILL)  # its job dies without cleaning up: now the block is an orphan
    holder.wait()
    held_mapped.close()
    os.close(held_open)
    removed = remove_orphaned_streaming_memory()
    assert {OPEN, MAPPED, OTHER_PROCESS} <= set(removed)
    assert blocks[NOT_STREAMINGS].exists()  # not streaming's: left alone


def test_a_live_streaming_loader_keeps_its_blocks_and_every_sample(tmp_path):
    with MDSWriter(out=str(tmp_path / "mds"), columns={"x": "int"}, size_limit=1 << 10) as writer:
        for x in range(200):
            writer.write({"x": x})
    with registration_turn():  # other test workers start loaders too
        dataset = StreamingDataset(local=str(tmp_path / "mds"), shuffle=False, batch_size=4)
    mine = {path.name for path in SHARED_MEMORY.glob(f"{dataset._shm_prefix_int:06}_*")}
    batches = iter(DataLoader(dataset, batch_size=4, num_workers=1))
    seen = [int(x) for x in next(batches)["x"]]

    # What streaming's clean_stale_shared_memory would have unlinked, while a worker reads and the rank lives on.
    remove_orphaned_streaming_memory()
    assert mine <= {path.name for path in SHARED_MEMORY.glob(f"{dataset._shm_prefix_int:06}_*")}
    seen += [int(x) for batch in batches for x in batch["x"]]
    assert seen == list(range(200))
    second_epoch = [int(x) for batch in DataLoader(dataset, batch_size=4, num_workers=1) for x in batch["x"]]
    assert second_epoch == list(range(200))
