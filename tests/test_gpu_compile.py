"""The fused LM-op and GRVQ kernels compile for an H100 (sm_90) without one; the fused ops and every decode
tile the autotuner may pick keep all their values in registers."""
import os
import re
import subprocess
import sys


def test_kernels_compile_for_sm90_and_the_fused_ops_and_decode_tiles_do_not_spill():
    # A fresh process: this one imported Triton for the interpreter (tests/conftest.py) when there is no GPU.
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "jala_kernels.gpu_compile"], check=False, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    rows = {match.group(1) + " " + match.group(2): int(match.group(3)) for match in
            re.finditer(r"kernel=(.+?)  warps=(\d+) .* spill_bytes=(\d+) fits", run.stdout)}
    names = {key.rsplit(" ", 1)[0] for key in rows}
    assert {"rms_norm forward", "swiglu forward", "swiglu backward", "rotary forward", "rotary backward",
            "grvq encode"} <= names
    assert all(any(name.startswith(tuned) for name in names) for tuned in ("grvq decode", "rms_norm backward"))
    assert all(spill == 0 for key, spill in rows.items() if not key.startswith("grvq encode")), rows
