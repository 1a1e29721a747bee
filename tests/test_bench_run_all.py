"""``make bench``'s summary names the result each benchmark wrote, also when it replaced one from earlier today."""
import datetime as dt
import os

from benchmarks import run_all


def test_the_summary_names_a_result_that_replaced_one_of_the_same_day(tmp_path, monkeypatch, capsys):
    today = dt.date.today().isoformat()
    earlier = tmp_path / f"{today}_attention_cpu.md"
    earlier.write_text("an earlier run of today\n")
    untouched = tmp_path / f"{today}_grvq_cpu.md"
    untouched.write_text("not rerun\n")
    for path in (earlier, untouched):  # hours ago, as a morning's run would be
        os.utime(path, ns=(path.stat().st_mtime_ns - 3600 * 10**9,) * 2)

    def benchmark(name, args, interpret=False):
        if name != "grvq":  # grvq writes nothing this time: its earlier file must not be claimed
            (tmp_path / f"{today}_{name}_cpu.md").write_text("this run\n")
        return 0

    monkeypatch.setattr(run_all, "benchmark", benchmark)
    monkeypatch.setattr(run_all, "throughput", lambda full, out: {"throughput": 0, "host_variants": 0})
    assert run_all.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[2].strip(" |")
            for line in (tmp_path / f"{today}_summary.md").read_text().splitlines() if line.startswith("| ")}
    assert rows["attention"] == earlier.name
    assert rows["grvq"] == "-"
    assert rows["lm_head"] == f"{today}_lm_head_cpu.md"
