"""``jala data synth | convert | inspect`` end to end, and the loader benchmark's smoke run."""
import json
import shutil

import pytest

from benchmarks import data_loader
from jala_ds.cli import main


def test_synth_convert_inspect_from_the_command_line(tmp_path, capsys):
    raw, mds = tmp_path / "raw", tmp_path / "mds"
    assert main(["data", "synth", "--out", str(raw), "--lab", "4", "--wild", "5", "--seed", "2"]) == 0
    assert main(["data", "convert", "--src", str(raw), "--out", str(mds), "--recipe", "tiny_cpu",
                 "data.frame_size=32"]) == 0
    report = json.loads((mds / "report.json").read_text())
    assert report["clips_in"] == report["written"] == 9 and report["settings"]["frame_size"] == 32
    capsys.readouterr()
    assert main(["data", "inspect", str(mds), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["subsets"]["lab"]["clips"] == 4 and summary["subsets"]["wild"]["clips"] == 5
    assert summary["subsets"]["lab"]["labeled"] == 4 and summary["conversion"]["rejected"] == 0
    assert main(["data", "convert", "--src", str(raw), "--out", str(mds), "--recipe", "tiny_cpu"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the frame size and the held-out split are the recipe's: no silent default
        main(["data", "convert", "--src", str(raw), "--out", str(tmp_path / "other")])
    assert "--recipe" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(raw), "--lab", "0", "--wild", "0"]) == 2
    manifest = (raw / "manifest.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["data", "synth", "--out", str(raw), "--lab", "1", "--wild", "1"]) == 2
    assert "already holds a synthetic corpus" in capsys.readouterr().err
    assert (raw / "manifest.jsonl").read_bytes() == manifest


def test_loader_benchmark_smoke_run_writes_its_table(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert data_loader.main(["--smoke", "--out", str(tmp_path)]) == 0
    [table] = tmp_path.glob("*_data_loader_*.md")
    header, _, *rows = ([cell.strip() for cell in line.split("|")[1:-1]]
                        for line in table.read_text().splitlines() if line.startswith("|"))
    assert [row[header.index("data.pack")] for row in rows] == ["True", "False"]
    assert all(float(row[header.index("samples per CPU-s")]) > 0 and row[header.index("samples")] == "10" for row in rows)


def test_inspect_names_a_truncated_shard(tiny_corpus, tmp_path, capsys):
    shutil.copytree(tiny_corpus.mds, tmp_path / "mds")
    shard = tmp_path / "mds/lab/piece00000/shard.00000.mds"
    shard.write_bytes(shard.read_bytes()[:5000])
    capsys.readouterr()
    assert main(["data", "inspect", str(tmp_path / "mds")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lab/piece00000/shard.00000.mds is corrupted" in err[0]


def test_inspect_counts_the_held_out_split_and_names_a_damaged_file(tmp_path, capsys):
    """The held-out clips were left out of every count, and a damaged report or index stopped with a traceback."""
    raw, mds = tmp_path / "raw", tmp_path / "mds"
    assert main(["data", "synth", "--out", str(raw), "--lab", "6", "--wild", "0", "--seed", "0"]) == 0
    assert main(["data", "convert", "--src", str(raw), "--out", str(mds), "--recipe", "tiny_cpu",
                 "data.heldout_fraction=0.5"]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", str(mds), "--json"]) == 0
    subsets = json.loads(capsys.readouterr().out)["subsets"]
    assert subsets["lab"]["clips"] + subsets["heldout/lab"]["clips"] == 6 and subsets["heldout/lab"]["clips"] > 0
    for damaged in ("report.json", "lab/index.json"):
        (mds / damaged).write_text("{cut")
        assert main(["data", "inspect", str(mds)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{mds / damaged} is damaged" in err[0]


@pytest.mark.parametrize("command, bad", [
    (["data", "synth", "--lab", "1", "--wild", "0", "--seed", "-1"], "--seed -1: use a seed of 0 or more"),
    (["data", "synth", "--lab", "1", "--wild", "0", "--frame-size", "100000"], "--frame-size 100000: use an even"),
    (["data", "convert", "--src", "raw", "--recipe", "tiny_cpu", "--shard-mb", "0"], "--shard-mb 0: use 1 to 4095"),
])
def test_out_of_range_numbers_get_one_line(command, bad, tmp_path, capsys):
    """A negative seed was refused in numpy's words, a huge frame size ran out of memory, a shard size of 0 meant
    no limit and a negative one was refused in streaming's words."""
    assert main([*command, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bad in err[0]
    assert not (tmp_path / "out").exists()
