"""Hand motion: the MANO frame, forward kinematics, metrics, and the GRVQ motion tokenizer.

- ``mano``: the 99-dim frame layout and rot6d conversions; ``kinematics``: 21 joints from frames (template
  skeleton, or the real MANO model through smplx); ``metrics``: MPJPE, PA-MPJPE, MWTE, MDE.
- The tokenizer: ``quantizer`` (GRVQ with EMA codebooks) inside ``autoencoder`` (one part) inside
  ``tokenizer_model`` (both parts, normalisation, losses, token layout); ``tokenizer`` wraps it in the data
  pipeline's numpy protocol and reads/writes checkpoints (``load_grvq_tokenizer``).
- Its jobs: ``train_tokenizer`` (``jala tokenizer train``, reading ``pose_corpus``, tracking with
  ``jala_ds.train.tracking``) and ``corpus_tokenize`` (``jala data tokenize``), both writing through
  ``checkpoint_folder`` and ``corpus_copy``. ``synthetic`` makes motion and pose-only corpora for tests and
  benchmarks.
- The "JALA w/o latent" baseline: ``token_predictor`` (boundary frames -> a chunk's motion codes, LAP's
  perceiver with a classifier), trained by ``train_token_predictor`` (``jala token-predictor train``) on
  ``chunk_pairs``, and ``pseudo_label`` (``jala token-predictor label``), which writes its codes into the
  video-only clips; its recipe section is ``token_predictor_config``.
- All four jobs run as one process or under torchrun (``torchrun_group``): the trainers data-parallel, the corpus
  copies (``corpus_copy``) with each rank writing its share and rank 0 merging the indexes. ``pose_corpus.open_mds``
  is how they read a corpus: every record by index, on any rank, shards hash-checked on first read.
"""
