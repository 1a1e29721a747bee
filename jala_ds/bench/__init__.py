"""Performance arithmetic: analytic FLOP count and MFU, the scaling planner (``jala plan``) and MLflow run
comparison (``jala compare``). Nothing here needs a GPU; ``docs/performance.md`` states every assumption.

    dims.py         model dimensions, read from the transformers configs the model builds (or written by hand)
    flops.py        model FLOPs per training sample, part by part, and ``mfu``
    cards.py        dense bf16 peak, memory and link bandwidth of the GPUs we plan for
    plan.py         step time vs GPU and node count under ZeRO-3 (compute + collectives)
    plan_report.py  the text ``jala plan`` prints, assumptions included
    calibrate.py    the MFU measured by the throughput benchmark, read back from its markdown result
    compare.py      side-by-side table, CSV, markdown and curves of MLflow runs
    tables.py       markdown tables shared by the above
    commands.py     registers ``jala plan`` and ``jala compare``
"""
