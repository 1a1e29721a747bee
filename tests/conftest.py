"""Session-wide test set-up: Triton's interpreter mode on machines without a GPU.

Triton builds its own library (``tl.max``, ``tl.zeros``, ...) for either the interpreter or the GPU compiler
when it is first imported, and several packages import it early (mosaicml-streaming, ``torch._dynamo``).
Without a GPU the kernels can only be interpreted, so import it in that mode before any of them does. The
variable is restored afterwards: dispatchers keep choosing the PyTorch references on CPU unless a test sets
``TRITON_INTERPRET=1`` itself (kernel modules are imported lazily, in the mode set at their first use).
"""
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    _previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    import triton.language  # noqa: F401

    if _previous is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _previous


@pytest.fixture(autouse=True)
def isolated_process_state():
    """Each test leaves the environment and the working directory as it found them: loaders and launchers set
    RANK, WORLD_SIZE, MLFLOW_TRACKING_URI and friends, and a leftover RANK would make the next test's
    ``deepspeed.init_distributed`` believe it was launched. MLflow's process-wide tracking URI, which a training
    job's ``Tracker`` sets, is cleared too: the next test's runs would land in the last test's store."""
    env, cwd = dict(os.environ), os.getcwd()
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A synthetic raw corpus converted to MDS once per session: ``raw``, ``mds`` folders and the ``report``.

    Small shards (64 KiB) so that each subset spans several shards, as a real corpus does.
    """
    from types import SimpleNamespace

    from jala_ds.config import load_config
    from jala_ds.data.convert import convert_corpus
    from jala_ds.data.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("tiny_corpus")
    synthesize_corpus(root / "raw", lab=24, wild=20, seed=0)
    report = convert_corpus(root / "raw", root / "mds", load_config("tiny_cpu").data, shard_bytes=1 << 16)
    return SimpleNamespace(raw=root / "raw", mds=root / "mds", report=report)


@pytest.fixture(scope="module")
def tiny_generation(tiny_corpus):
    """What MCP decoding tests generate with: the tiny recipe, its random model in eval mode, tokenizer and
    vocabulary, and three labelled records of the session corpus. One per test module: a module may edit the
    model's weights."""
    from streaming import LocalDataset

    from jala_ds.config import load_config
    from jala_ds.model.build import build_model
    from jala_ds.vocab import add_motion_vocab, load_text_tokenizer

    torch.manual_seed(0)
    cfg = load_config("tiny_cpu")
    tokenizer = load_text_tokenizer(None)
    vocab = add_motion_vocab(tokenizer, cfg.motion_tokenizer.vocab_per_part)
    model = build_model(cfg, vocab).eval()
    lab = LocalDataset(local=str(tiny_corpus.mds / "lab"))
    return cfg, model, tokenizer, vocab, [lab[i] for i in range(3)]
