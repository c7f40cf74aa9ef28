"""Orchestration: Prefect flows over the library's stages (the pipeline, labeling on a work pool, deployments).

Only the ``polar`` command imports this package; nothing in ``polar/`` does.
"""
