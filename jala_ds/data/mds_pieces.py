"""MDS datasets built in pieces, so that a build that stops part-way resumes where it stopped, on any number of ranks.

A piece is a fixed run of the input's records (``PIECE_CLIPS`` of them). Its records go to a folder of its own
in each dataset it feeds, and it counts as done only once those are finished and its tally is on disk:

    <out>/<dataset>/piece00000/{index.json, shard.00000.mds, ...}   what piece 0 wrote to this dataset
    <out>/<dataset>/index.json                 every piece's shards in piece order (streaming's merge_index layout)
    <out>/pieces/plan.json                     what is being built: the input's fingerprint, the settings
    <out>/pieces/<piece>.json                  the piece is done: its tally

Rank r builds the r-th, (r + W)-th, ... of the pieces still to do; when all are done, rank 0 writes each dataset's
index over its pieces. Readers see one dataset in the input's order, and since pieces depend on the input alone,
the shards and their hashes are the same for any number of ranks, resumed or not. A build rerun with ``resume``
keeps the pieces it finished and writes the others again; it refuses to resume from other inputs or settings.
Used by ``jala data convert`` and the corpus copies (``jala data tokenize``, ``jala token-predictor label``).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jala_ds.torchrun_group import Ranks

PIECE_CLIPS = 10_000
"""Input records per piece: the most a stopped build redoes per rank (minutes of decoding), and few enough pieces
(750 for the paper's 7.5M clips) that the merged index stays small."""
LEDGER = "pieces"
RANKS_WAIT = timedelta(hours=12)
"""How long a rank that has built its share of the pieces waits for the others (``torchrun_ranks(RANKS_WAIT)``):
on a 7.5M-clip corpus a slow node can finish its share many minutes after the others, and torch's default (10
minutes under NCCL) would stop a healthy build at its end."""


def piece_folder(index: int) -> str:
    return f"piece{index:05d}"


def piece_runs(records: int, size: int) -> list[range]:
    """The input's records cut into runs of ``size``, the last one shorter."""
    if size < 1:
        raise ValueError(f"--piece-clips {size}: use at least 1 clip per piece")
    return [range(start, min(start + size, records)) for start in range(0, records, size)]


class PieceLedger:
    """Which pieces of the build at ``out`` are done (``<out>/pieces/``), and this rank's share of the others.

    Opening it decides whether the build may write to ``out``: ``occupied`` (what it would write over) must be
    empty, or be cleared first (``overwrite``), or be an earlier build of the same ``plan`` (``resume``)."""

    def __init__(self, out: Path, plan: dict[str, Any], ranks: Ranks, *, occupied: list[Path], resume: bool,
                 overwrite: bool):
        if resume and overwrite:
            raise ValueError("--resume keeps what an earlier build wrote and --overwrite deletes it: pass one")
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"--out {out} is a file: choose a folder (new, or one an earlier build wrote)")
        self.folder, self.ranks = out / LEDGER, ranks
        begun = self.folder / "plan.json"
        if resume and begun.is_file():
            check_same_plan(json.loads(begun.read_text()), json.loads(json.dumps(plan)), out)   # tuples as lists
        elif occupied and not overwrite:
            if resume:
                raise FileExistsError(f"--resume: {occupied[0]} holds data but {begun} is missing, so it is not a "
                                      "build that can resume: pass --overwrite or choose another --out")
            raise FileExistsError(f"{occupied[0]} already holds data: pass --resume to finish the build that wrote "
                                  "it, --overwrite to start again, or choose another --out")
        self.done = {path.relative_to(self.folder).with_suffix("").as_posix()
                     for path in self.folder.rglob("*.json") if path != begun} if resume else set()
        ranks.barrier()   # every rank has looked at <out> before rank 0 changes it
        if ranks.rank == 0:
            if not resume:
                for folder in [*occupied, self.folder]:
                    shutil.rmtree(folder, ignore_errors=True)  # no stale data survives, of any dataset
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(begun, plan)
        ranks.barrier()

    def mine(self, pieces: list[str]) -> list[str]:
        """This rank's share of the ``pieces`` not yet done, in their order."""
        return [piece for piece in pieces if piece not in self.done][self.ranks.rank::self.ranks.world_size]

    def finish(self, piece: str, tally: dict[str, Any]) -> None:
        """Mark ``piece`` done, with its tally: only once everything it wrote is finished."""
        write_json(self.folder / f"{piece}.json", tally)

    def tallies(self, pieces: list[str]) -> list[dict[str, Any]]:
        """The tallies of ``pieces``, in their order; call once every rank has finished its share."""
        missing = [piece for piece in pieces if not (self.folder / f"{piece}.json").is_file()]
        if missing:
            raise FileNotFoundError(f"rank {self.ranks.rank} cannot see {self.folder / missing[0]}.json: every "
                                    "rank must write --out on one shared filesystem")
        return [json.loads((self.folder / f"{piece}.json").read_text()) for piece in pieces]


def build_progress(out: Path) -> dict[str, Any] | None:
    """How far the build at ``out`` has got, ``{"build", "pieces", "done"}``, read from its ledger by any process
    (``jala data inspect`` while the ranks work); None where ``out`` was not built in pieces."""
    begun = out / LEDGER / "plan.json"
    if not begun.is_file():
        return None
    plan = read_json(begun)
    done = sum(1 for path in (out / LEDGER).rglob("*.json") if path != begun)
    return {"build": plan["build"], "pieces": plan["pieces"], "done": done}


def check_same_plan(begun: dict[str, Any], plan: dict[str, Any], out: Path) -> None:
    """One clear error when a build is resumed from other inputs or settings than it began with."""
    for key in sorted(set(begun) | set(plan)):
        if begun.get(key) != plan.get(key):
            raise ValueError(f"--resume: {out} was begun with {key}={begun.get(key)!r}, this run has "
                             f"{plan.get(key)!r}: resume with the first run's inputs and settings, or pass "
                             "--overwrite to start again")


def merge_pieces(dataset: Path, pieces: list[str]) -> None:
    """Write ``dataset/index.json`` over the shards of the piece folders ``pieces`` (in that order)."""
    indexes = [dataset / piece / "index.json" for piece in pieces]
    missing = [str(index.parent) for index in indexes if not index.is_file()]
    if missing:
        raise FileNotFoundError(f"rank 0 cannot see {', '.join(missing)}: every rank must write --out on one "
                                "shared filesystem")
    shards = []
    for index in indexes:
        for shard in json.loads(index.read_text())["shards"]:
            for files in ("raw_data", "zip_data", "raw_meta", "zip_meta"):
                if shard.get(files):
                    shard[files]["basename"] = f"{index.parent.name}/{shard[files]['basename']}"
            shards.append(shard)
    dataset.mkdir(parents=True, exist_ok=True)
    write_json(dataset / "index.json", {"version": 2, "shards": shards})


def write_json(path: Path, obj: Any) -> None:
    """Readers (and a resumed build) never see half a file: it appears whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(obj, sort_keys=True))
    partial.replace(path)


def check_source_apart(source: Path, out: Path, folders: list[str]) -> None:
    """``source`` is neither ``out`` nor inside one of the ``folders`` a build writes there, which ``--overwrite``
    deletes: a raw corpus or a source corpus would go with them. A source elsewhere under ``out`` is fine."""
    written = [out / folder for folder in (*folders, LEDGER)]
    holder = out if source.resolve() == out.resolve() else next(
        (folder for folder in written if source.resolve().is_relative_to(folder.resolve())), None)
    if holder is not None:
        raise ValueError(f"--src {source} is in {holder}, where this build writes (and --overwrite deletes): "
                         "choose an --out that does not hold the source")


def read_json(path: Path) -> Any:
    """The JSON in ``path``; a damaged file is a ``ValueError`` that names it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is damaged ({err}): build the corpus again (--overwrite)") from None


def content_sha256(path: Path) -> str:
    """A file's, or a folder's files', content hash: what a resumed build checks a checkpoint it reads against."""
    root, digest = Path(path), hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]:
        digest.update(file.relative_to(root).as_posix().encode())
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
