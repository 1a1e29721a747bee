"""The converter's held-out split: chosen by clip id alone (the same for any worker count), disjoint from the
training streams, labelled clips only (wild: trusted pseudo labels), and the report still balances; the motion
evaluation reads its generation-task clips."""
from __future__ import annotations

from streaming import LocalDataset

from jala_ds.config import load_config
from jala_ds.data.convert import HELDOUT, convert_corpus, is_heldout
from jala_ds.eval.motion_eval import read_heldout


def clip_ids(folder) -> set[str]:
    if not (folder / "index.json").is_file():
        return set()
    dataset = LocalDataset(local=str(folder))
    return {dataset[i]["clip_id"] for i in range(len(dataset))}


def test_heldout_split_is_deterministic_disjoint_and_labelled(tiny_corpus, tmp_path):
    data = load_config("tiny_cpu", ["data.heldout_fraction=0.4"]).data
    one = convert_corpus(tiny_corpus.raw, tmp_path / "one", data, workers=1)
    two = convert_corpus(tiny_corpus.raw, tmp_path / "two", data, workers=2)
    assert one["heldout_by_subset"] == two["heldout_by_subset"]
    assert one["clips_in"] == one["written"] + one["rejected"] == tiny_corpus.report["clips_in"]
    everything = set()
    for subset in ("lab", "wild"):
        train, heldout = clip_ids(tmp_path / "one" / subset), clip_ids(tmp_path / "one" / HELDOUT / subset)
        assert heldout == clip_ids(tmp_path / "two" / HELDOUT / subset)
        assert not train & heldout
        assert len(heldout) == one["heldout_by_subset"].get(subset, 0)
        assert len(train) + len(heldout) == one["written_by_subset"][subset]
        everything |= train | heldout
        if heldout:
            dataset = LocalDataset(local=str(tmp_path / "one" / HELDOUT / subset))
            assert all(dataset[i]["labeled"] == 1 for i in range(len(dataset)))
        training = LocalDataset(local=str(tmp_path / "one" / subset))
        labelled_in_training = {training[i]["clip_id"] for i in range(len(training)) if training[i]["labeled"]}
        assert not any(is_heldout(c, 0.4) for c in labelled_in_training)  # video-only wild clips stay in training
        assert all(is_heldout(c, 0.4) for c in heldout)
    assert len(everything) == one["written"]
    assert one["heldout_by_subset"]["lab"] > 0
    # Table 1 scores motion generation: a description's instruction describes its motion, and a continuation
    # asks to go on from motion the prompt does not show
    held = LocalDataset(local=str(tmp_path / "one" / HELDOUT / "lab"))
    scored = read_heldout(tmp_path / "one", "lab")
    assert [r["clip_id"] for r in scored] == [held[i]["clip_id"] for i in range(len(held))
                                             if held[i]["task"] == "generation"]
    assert 0 < len(scored) < len(held)


def test_no_heldout_share_keeps_every_clip_in_training(tiny_corpus):
    assert not (tiny_corpus.mds / HELDOUT).exists()
    assert sum(tiny_corpus.report["heldout_by_subset"].values()) == 0
