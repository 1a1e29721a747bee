"""``jala compare`` on a real MLflow sqlite store with three small runs."""
from __future__ import annotations

import csv
import math

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from jala_ds.bench import compare
from jala_ds.bench.compare import compare_runs, load_runs
from jala_ds.cli import main

HOUR_MS = 3_600_000
START_MS = 1_767_225_600_000
RUNS = {
    # name: (params, loss per step, samples_per_s per log or None, hours); base also logs peak_memory_gb
    "base": ({"train.lr": "0.001", "train.seed": "1", "model.align": "True"},
             [2.0, 1.5, 1.2, 1.1, 1.15], [10.0, 50.0, 52.0, 51.0], 2.0),
    "low-lr": ({"train.lr": "0.0003", "train.seed": "1", "model.align": "True"},
               [2.0, 1.8, 1.6, 1.5, 1.4], [12.0, 48.0, 49.0], 1.5),
    "no-align": ({"train.lr": "0.001", "train.seed": "1", "model.align": "False", "model.lsp_context": "False"},
                 [2.0, 1.4, 1.0, 0.9, 0.95], None, 0.5),
}
MEDIAN_RATE = {"base": 50.5, "low-lr": 48.0, "no-align": None}  # the warm-up value does not pull the median
PEAK_MEMORY = [61.5, 70.25, 68.0]  # base only; falling again, as a per-window peak may: the largest counts


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """``mlflow.db`` in a fresh folder holding experiment ``ablation`` (three runs) and ``other`` (one run)."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("ablation")
    ids = {}
    for i, (name, (params, losses, rates, hours)) in enumerate(RUNS.items()):
        start = START_MS + i * HOUR_MS
        run_id = client.create_run(experiment, start_time=start, run_name=name).info.run_id
        metrics = [Metric("loss", v, start + step, step) for step, v in enumerate(losses)]
        metrics += [Metric("accuracy", 1 - v / 2, start + step, step) for step, v in enumerate(losses)]
        metrics += [Metric("train/samples_per_s", v, start + step, step) for step, v in enumerate(rates or [])]
        if name == "base":
            metrics += [Metric("peak_memory_gb", v, start + step, step) for step, v in enumerate(PEAK_MEMORY)]
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run_id, end_time=int(start + hours * HOUR_MS))
        ids[name] = run_id
    # Runs of other jobs in the same experiment, which the training runs' table leaves out: the tokenizer the runs
    # read (tagged) and an evaluation nested under a training run (as one from before the tag is).
    tokenizer = client.create_run(experiment, run_name="tokenizer", tags={"jala.job": "tokenizer"}).info.run_id
    client.log_batch(tokenizer, metrics=[Metric("loss", 0.5, START_MS, 1)], params=[Param("motion_tokenizer.stages", "2")])
    ids["tokenizer"] = tokenizer
    ids["eval"] = client.create_run(experiment, run_name="eval", tags={"mlflow.parentRunId": ids["base"]}).info.run_id
    other = client.create_experiment("other")
    ids["other"] = client.create_run(other, run_name="elsewhere").info.run_id
    return folder, uri, ids


def test_table_shows_differing_params_final_best_throughput_and_hours(store, tmp_path):
    _, uri, _ = store
    rows = compare_runs("ablation", metrics=["loss"], tracking_uri=uri, out_dir=tmp_path).rows
    assert [row["run"] for row in rows] == list(RUNS)  # oldest first
    for row, (params, losses, _, hours) in zip(rows, RUNS.values()):
        assert "train.seed" not in row  # the same in every run
        assert row["train.lr"] == params["train.lr"] and row["model.align"] == params["model.align"]
        assert row["model.lsp_context"] == params.get("model.lsp_context")
        assert row["loss final"] == losses[-1] and row["loss best"] == min(losses)
        assert row["hours"] == pytest.approx(hours)
        assert row.get("train/samples_per_s median") == MEDIAN_RATE[row["run"]]
        assert row.get("peak_memory_gb max") == (max(PEAK_MEMORY) if row["run"] == "base" else None)
        assert row["status"] == "FINISHED"


def test_writes_csv_markdown_and_png(store, tmp_path):
    _, uri, _ = store
    result = compare_runs("ablation", metrics=["loss", "accuracy:max"], tracking_uri=uri, out_dir=tmp_path / "out")
    with result.paths["csv"].open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["run"] for r in table] == list(RUNS)
    assert [float(r["accuracy best"]) for r in table] == [1 - min(losses) / 2 for _, losses, _, _ in RUNS.values()]
    assert math.isclose(float(table[0]["loss final"]), 1.15)
    markdown = result.paths["markdown"].read_text()
    assert "| run | run_id | status | hours |" in markdown and "no-align" in markdown
    png = result.paths["png"].read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_chosen_runs_in_the_order_given(store, tmp_path):
    _, uri, ids = store
    rows = compare_runs("ablation", [ids["no-align"], ids["base"]], ["loss"], uri, tmp_path).rows
    assert [row["run"] for row in rows] == ["no-align", "base"]
    assert "train.lr" not in rows[0] and rows[0]["model.align"] == "False"


def test_default_store_and_environment_uri(store, tmp_path, monkeypatch):
    folder, uri, _ = store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(folder)  # MLflow's default sqlite:///mlflow.db is relative to the working directory
    assert len(compare_runs("ablation", out_dir=tmp_path / "default").rows) == 3
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert len(compare_runs("ablation", out_dir=tmp_path / "env").rows) == 3


def test_bad_input_gets_one_clear_error(store, tmp_path):
    _, uri, ids = store
    with pytest.raises(ValueError, match="known experiments are Default, ablation, other"):
        compare_runs("ablaton", tracking_uri=uri, out_dir=tmp_path)
    with pytest.raises(ValueError, match="no run logged it; logged metrics are accuracy, loss"):
        compare_runs("ablation", metrics=["val_loss"], tracking_uri=uri, out_dir=tmp_path)
    with pytest.raises(ValueError, match="belongs to another experiment"):
        compare_runs("ablation", [ids["other"]], tracking_uri=uri, out_dir=tmp_path)
    with pytest.raises(ValueError, match="no MLflow store at"):
        compare_runs("ablation", tracking_uri=f"sqlite:///{tmp_path / 'none.db'}", out_dir=tmp_path)
    with pytest.raises(ValueError, match="NAME:max"):
        compare_runs("ablation", metrics=["loss:up"], tracking_uri=uri, out_dir=tmp_path)


def test_compare_command_writes_to_out(store, tmp_path, capsys):
    _, uri, _ = store
    out = tmp_path / "cmp"
    assert main(["compare", "--experiment", "ablation", "--metric", "loss", "--tracking-uri", uri,
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "low-lr" in printed and f"png: {out / 'curves.png'}" in printed
    assert sorted(p.name for p in out.iterdir()) == ["comparison.csv", "comparison.md", "curves.png"]
    assert main(["compare", "--experiment", "missing", "--tracking-uri", uri, "--out", str(out)]) == 2
    assert "jala compare: --experiment 'missing'" in capsys.readouterr().err


@pytest.mark.parametrize("flags, metrics", [
    ([], ["loss"]),
    (["--metric", "loss", "accuracy:max"], ["loss", "accuracy"]),
    (["--metric", "loss", "--metric", "accuracy:max"], ["loss", "accuracy"]),   # a repeated flag adds, not replaces
])
def test_compare_command_compares_every_metric_named(store, tmp_path, flags, metrics):
    _, uri, _ = store
    out = tmp_path / "cmp"
    assert main(["compare", "--experiment", "ablation", *flags, "--tracking-uri", uri, "--out", str(out)]) == 0
    header = next(csv.reader((out / "comparison.csv").open()))
    assert sorted({column.split()[0] for column in header if column.endswith(" final")}) == sorted(metrics)


def test_an_experiment_s_runs_of_another_job_are_compared_apart(store, tmp_path, capsys):
    _, uri, ids = store
    tokenizer_only = compare_runs("ablation", tracking_uri=uri, out_dir=tmp_path / "tok", job="tokenizer")
    assert [row["run"] for row in tokenizer_only.rows] == ["tokenizer"]
    with pytest.raises(ValueError, match="--job nothing: experiment 'ablation' has no runs of that job; its runs "
                                         "are of: eval, tokenizer, train"):
        compare_runs("ablation", tracking_uri=uri, out_dir=tmp_path / "none", job="nothing")
    chosen = compare_runs("ablation", [ids["base"], ids["tokenizer"]], tracking_uri=uri, out_dir=tmp_path / "ids")
    assert [row["run"] for row in chosen.rows] == ["base", "tokenizer"]   # runs named by id, whatever their job


def test_a_run_resumed_after_a_crash_reads_as_the_branch_it_went_on_with(tmp_path):
    """Killed after step 4, resumed from its step-2 checkpoint: steps 3 and 4 are logged twice, and the first
    values (the lower, abandoned ones) must not be the run's best, final, or curve."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("crash"), start_time=START_MS, run_name="r").info.run_id
    first = [Metric("loss", v, START_MS + step, step) for step, v in enumerate([2.0, 1.5, 1.2, 0.5, 0.4])]
    again = [Metric("loss", v, START_MS + 10 + step, step) for step, v in [(3, 1.1), (4, 1.0), (5, 0.9)]]
    client.log_batch(run_id, metrics=first + again)
    row, = compare_runs("crash", metrics=["loss"], tracking_uri=uri, out_dir=tmp_path / "out").rows
    assert (row["loss final"], row["loss best"]) == (0.9, 0.9)


def test_a_diverged_step_is_no_run_s_best_median_or_peak(tmp_path):
    """NaN and inf steps (MLflow's sqlite keeps inf as the largest float) are shown as the final value when last,
    and never win best, median or peak, whatever their place in the history."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("diverged"), start_time=START_MS, run_name="r").info.run_id
    series = {"loss": [math.nan, 1.0, 0.5, math.inf], "accuracy": [math.inf, 0.2, 0.4, 0.3],
              "samples_per_s": [10.0, math.nan, 30.0, 40.0], "peak_memory_gb": [2.0, math.inf, 3.0, math.nan]}
    client.log_batch(run_id, metrics=[Metric(key, v, START_MS + step, step) for key, values in series.items()
                                      for step, v in enumerate(values)])
    row, = compare_runs("diverged", metrics=["loss", "accuracy:max"], tracking_uri=uri, out_dir=tmp_path / "out").rows
    assert (row["loss final"], row["loss best"]) == (math.inf, 0.5)
    assert (row["accuracy final"], row["accuracy best"]) == (0.3, 0.4)
    assert (row["samples_per_s median"], row["peak_memory_gb max"]) == (30.0, 3.0)


def test_a_run_of_one_logged_point_is_drawn_as_a_dot(tmp_path):
    """A line through one point draws nothing: a run stopped after its first log would vanish from the plot."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("short")
    runs, histories = [], []
    for name, losses in (("one", [1.0]), ("three", [2.0, 1.5, 1.2])):
        run_id = client.create_run(experiment, start_time=START_MS, run_name=name).info.run_id
        client.log_batch(run_id, metrics=[Metric("loss", v, START_MS + step, step) for step, v in enumerate(losses)])
        runs.append(client.get_run(run_id))
        histories.append({"loss": client.get_metric_history(run_id, "loss")})
    fig = compare.plot_curves(runs, histories, [compare.MetricSpec.parse("loss")], tmp_path / "curves.png")
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert len(lines["one"].get_xdata()) == 1 and lines["one"].get_marker() == "o"
    assert len(lines["three"].get_xdata()) == 3 and lines["three"].get_marker() in (None, "None", "")


def test_a_param_holding_a_pipe_or_a_newline_keeps_its_markdown_row_whole(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("pipes")
    for i, value in enumerate(["a|b", "line one\nline two"]):
        run_id = client.create_run(experiment, start_time=START_MS + i, run_name=f"r{i}").info.run_id
        client.log_batch(run_id, metrics=[Metric("loss", 1.0, START_MS, 0)], params=[Param("data.filter", value)])
    markdown = compare_runs("pipes", tracking_uri=uri, out_dir=tmp_path / "out").paths["markdown"].read_text()
    rows = [line for line in markdown.splitlines() if line.startswith(("| r0 ", "| r1 "))]
    assert len(rows) == 2 and "a\\|b" in rows[0] and "line one line two" in rows[1]
    assert {line.replace("\\|", "").count("|") for line in rows} == {markdown.splitlines()[2].count("|")}


def test_runs_are_named_by_the_short_ids_the_table_shows(store, tmp_path):
    _, uri, ids = store
    first = compare_runs("ablation", tracking_uri=uri, out_dir=tmp_path / "all").rows
    short = [row["run_id"] for row in first if row["run"] in ("no-align", "base")][::-1]
    assert [row["run"] for row in compare_runs("ablation", short, tracking_uri=uri, out_dir=tmp_path).rows] == \
        ["no-align", "base"]
    with pytest.raises(ValueError, match="--runs 0000: no run of experiment 'ablation' has an id starting so"):
        compare_runs("ablation", ["0000"], tracking_uri=uri, out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"--runs : \d runs of experiment 'ablation'"):
        compare_runs("ablation", [""], tracking_uri=uri, out_dir=tmp_path)


def test_a_folder_store_gets_one_clear_error_not_a_traceback_nor_a_new_empty_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    missing = tmp_path / "missing" / "mlruns"
    with pytest.raises(ValueError, match="no MLflow store at"):
        compare_runs("ablation", tracking_uri=f"file://{missing}", out_dir=tmp_path / "out")
    assert not missing.exists()
    (tmp_path / "mlruns").mkdir()
    with pytest.raises(ValueError, match=f"--tracking-uri file://{tmp_path / 'mlruns'}: .*sqlite store"):
        compare_runs("ablation", tracking_uri=f"file://{tmp_path / 'mlruns'}", out_dir=tmp_path / "out")


def test_an_experiment_of_more_runs_than_one_search_page_is_read_whole(tmp_path, monkeypatch):
    """MLflow answers a search with one page of runs and a token for the next; pages of 2 stand in for its 1000."""
    monkeypatch.setattr(compare, "SEARCH_PAGE", 2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("sweep")
    for i in range(5):
        run_id = client.create_run(experiment, start_time=START_MS + i, run_name=f"r{i}").info.run_id
        client.log_batch(run_id, metrics=[Metric("loss", 1.0 / (i + 1), START_MS, 0)])
    assert [run.info.run_name for run in load_runs(client, "sweep")] == [f"r{i}" for i in range(5)]
