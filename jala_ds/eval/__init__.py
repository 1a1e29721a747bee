"""Using and judging trained models: MCP motion generation with the Table-1 metrics, pictures and the latent
space of a pretraining run (``jala eval``), and a post-trained policy served over HTTP (``jala serve``).

    jala eval motion --ckpt demo_out/run --data demo_out/mds --split lab     # metrics table + PNGs + MLflow
    jala eval latents --ckpt demo_out/run --data demo_out/mds                # Fig. 4: PCA of h and z
"""
