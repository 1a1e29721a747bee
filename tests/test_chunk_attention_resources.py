"""The chunk-attention kernels compile for an H100 (sm_90) without one, within its shared memory."""
import os
import subprocess
import sys


def test_first_configs_compile_for_sm90_and_fit_shared_memory():
    # A fresh process: this one imported Triton for the interpreter (tests/conftest.py) when there is no GPU.
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "jala_kernels.chunk_attention_resources", "--head-dim", "128",
                          "--first"], check=False, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["kernel=forward", "kernel=dk/dv", "kernel=dq", "kernel=delta"]
    assert all(line.endswith(" fits") for line in lines)
