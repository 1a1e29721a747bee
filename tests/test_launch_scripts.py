"""The launch scripts' own logic, with the launchers they end in replaced by stubs that print their arguments:
what ``launch/deepspeed.sh`` asks of the deepspeed launcher (the hostfile's slots, a master address other nodes
reach), the ``.deepspeed_env`` lines it refuses (the launcher exports each line verbatim on every node, so a
comment would comment out the rest of a node's command), ``launch/torchrun.sh``'s refusal of a multi-node
launch without a rendezvous host, and ``launch/slurm.sbatch``'s answer to SLURM's warning before a time limit
(ask the ranks to stop, wait for their save, requeue)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from jala_ds.train.ds_config import PROJECT_ROOT

LAUNCH = PROJECT_ROOT / "launch"


@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, str]:
    """An environment whose ``deepspeed``, ``torchrun`` and ``jala`` print their arguments, and an empty $HOME."""
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    home.mkdir()
    for name in ("deepspeed", "torchrun", "jala"):
        stub = bin_dir / name
        stub.write_text(f'#!/usr/bin/env bash\necho {name} "$@"\n')
        stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "NNODES", "DS_ENV_FILE")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", HOME=str(home), GPUS_PER_NODE="8")
    return env


def launch(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LAUNCH / script), *args], env=env, capture_output=True, text=True, timeout=60)


def test_a_hostfile_launch_keeps_its_slots_and_meets_at_the_first_host_by_name(stubs, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\n\ngpu-a slots=4\ngpu-b slots=4\n")
    done = launch("deepspeed.sh", ["--hostfile", str(hostfile), "--recipe", "r", "train.lr=1e-4"], stubs)
    assert done.returncode == 0, done.stderr
    args = done.stdout.split()
    assert "--num_gpus" not in args, "it would replace every host's slots"
    assert args[args.index("--master_addr") + 1] == "gpu-a"
    assert args[-5:] == [shutil.which("jala", path=stubs["PATH"]), "train", "--recipe", "r", "train.lr=1e-4"]
    stubs["MASTER_ADDR"] = "10.0.0.1"
    args = launch("deepspeed.sh", ["--hostfile", str(hostfile), "--recipe", "r"], stubs).stdout.split()
    assert args[args.index("--master_addr") + 1] == "10.0.0.1"


def test_a_one_machine_launch_starts_gpus_per_node_ranks(stubs):
    args = launch("deepspeed.sh", ["--recipe", "r"], stubs).stdout.split()
    assert args[args.index("--num_gpus") + 1] == "8" and "--master_addr" not in args


def test_the_shipped_deepspeed_env_example_passes_and_a_comment_is_refused_by_file_and_line(stubs):
    env_file = Path(stubs["HOME"]) / ".deepspeed_env"
    shutil.copy(LAUNCH / ".deepspeed_env.example", env_file)
    assert launch("deepspeed.sh", ["--recipe", "r"], stubs).returncode == 0
    env_file.write_text("OMP_NUM_THREADS=8\n# NCCL settings\nNCCL_DEBUG=WARN\n")
    done = launch("deepspeed.sh", ["--recipe", "r"], stubs)
    assert done.returncode == 2 and not done.stdout, "the launcher must not start"
    assert f"{env_file} line 2 is not NAME=VALUE" in done.stderr


def test_torchrun_on_several_nodes_needs_a_rendezvous_host(stubs):
    done = launch("torchrun.sh", ["--recipe", "r"], {**stubs, "NNODES": "2"})
    assert done.returncode == 2 and "NNODES=2 needs MASTER_ADDR" in done.stderr and not done.stdout
    args = launch("torchrun.sh", ["--recipe", "r"], {**stubs, "NNODES": "2", "MASTER_ADDR": "gpu-a"}).stdout.split()
    assert args[args.index("--rdzv_endpoint") + 1] == "gpu-a:29500"


@pytest.mark.parametrize("listing, ranks", [
    ('echo "GPU 0: H200 (UUID: a)"; echo "  MIG 1g.18gb Device 0: (UUID: m)"; echo "GPU 1: H200 (UUID: b)"', "2"),
    ('echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."; exit 9', "2"),
    ('echo "No devices were found"; exit 6', "2"),
    ('for i in 0 1 2 3; do echo "GPU $i: H200 (UUID: $i)"; done', "4"),
])
def test_torchrun_starts_one_rank_per_listed_gpu_and_two_without_one(stubs, listing, ranks):
    """Every line nvidia-smi printed was counted: its one-line error, followed by the fallback, made
    --nproc_per_node "1\\n2", and a MIG line counted as a GPU."""
    bin_dir = Path(stubs["PATH"].split(":")[0])
    (bin_dir / "nvidia-smi").write_text(f"#!/usr/bin/env bash\n{listing}\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    done = launch("torchrun.sh", ["--recipe", "r"], stubs)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split()[:5] == ["torchrun", "--nnodes", "1", "--nproc_per_node", ranks]


def test_a_missing_hostfile_is_named_and_the_equals_form_is_read(stubs, tmp_path):
    for args in (["--hostfile"], ["--hostfile", str(tmp_path / "nope"), "--recipe", "r"]):
        done = launch("deepspeed.sh", args, stubs)
        assert done.returncode == 2 and not done.stdout, "the launcher must not start"
        assert done.stderr.startswith("launch/deepspeed.sh: --hostfile ") and "is not a file" in done.stderr
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("gpu-a slots=4\n")
    args = launch("deepspeed.sh", [f"--hostfile={hostfile}", "--recipe", "r"], stubs).stdout.split()
    assert args[args.index("--hostfile") + 1] == str(hostfile) and args[args.index("--master_addr") + 1] == "gpu-a"
    assert args[-3:] == ["train", "--recipe", "r"]


SRUN_STUB = """#!/usr/bin/env bash
echo "$@" > srun.args
touch srun.started
for _ in $(seq 300); do
  if [[ -e "$JALA_STOP_FILE" ]]; then sleep 0.5; touch saved; exit 0; fi   # the ranks save, then return
  if [[ -e ranks.fail ]]; then exit 3; fi
  sleep 0.1
done
exit 4
"""


@pytest.fixture
def slurm(stubs, tmp_path) -> dict[str, str]:
    """``stubs`` plus the job's SLURM variables, an ``srun`` that runs until the stop file appears and a
    ``scontrol`` that records a requeue; the job runs in ``tmp_path``."""
    bin_dir = Path(stubs["PATH"].split(":")[0])
    (bin_dir / "srun").write_text(SRUN_STUB)
    # a large allocation's node list: a reader that stops at the first line would end the stub by SIGPIPE
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\n'
                                      'if [[ $1 == show ]]; then echo gpu-a; seq -f "gpu-%g" 100000\n'
                                      'else echo "$@" > requeued; fi\n')
    for name in ("srun", "scontrol"):
        (bin_dir / name).chmod(0o755)
    (tmp_path / "logs").mkdir()
    return {**stubs, "SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "jala-pretrain", "SLURM_JOB_NODELIST": "gpu-[a-b]",
            "SLURM_JOB_NUM_NODES": "2", "SLURM_CPUS_PER_TASK": "64", "SLURM_GPUS_ON_NODE": "8"}


def submit(env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(LAUNCH / "slurm.sbatch"), "pretrain_internvl3_2b", "train.lr=1e-4"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_slurms_warning_asks_the_ranks_to_stop_waits_for_their_save_and_requeues(slurm, tmp_path):
    job = submit(slurm, tmp_path)
    deadline = time.monotonic() + 30
    while not (tmp_path / "srun.started").exists():
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[0]
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@600 sends: to the batch shell only
    output, _ = job.communicate(timeout=30)
    assert job.returncode == 0, output
    assert (tmp_path / "saved").exists(), "the job ended before its ranks had saved"
    assert (tmp_path / "logs" / "jala-pretrain-77.stop").exists()
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "77"]
    args = (tmp_path / "srun.args").read_text().split()
    assert args[args.index("--rdzv_endpoint") + 1] == "gpu-a:29500" and args[-3:] == [
        "--recipe", "pretrain_internvl3_2b", "train.lr=1e-4"]


def test_a_job_that_fails_keeps_its_status_and_is_not_requeued(slurm, tmp_path):
    (tmp_path / "logs" / "jala-pretrain-77.stop").touch()  # left by the allocation before: removed at start
    (tmp_path / "ranks.fail").touch()
    job = submit(slurm, tmp_path)
    output, _ = job.communicate(timeout=30)
    assert job.returncode == 3, output
    assert not (tmp_path / "requeued").exists() and not (tmp_path / "logs" / "jala-pretrain-77.stop").exists()
