"""bigcos: is cosine similarity of embeddings really about similarity? At production scale.

Python API (what the CLI does, callable from a notebook)::

    import bigcos
    data = bigcos.ingest("data/ml-latest-small/interactions.parquet", "out/matrix")
    data = bigcos.load_matrix("out/matrix")   # data.train (CSR), data.test, data.user_ids ...
"""

__version__ = "0.1.0"

# Public name -> module that defines it; imported on first use so `bigcos --help` stays fast.
_API = {
    "ingest": "bigcos.matrix",
    "load_matrix": "bigcos.matrix",
    "Interactions": "bigcos.matrix",
    "UserError": "bigcos.errors",
    "truncated_svd": "bigcos.svd", "Spectrum": "bigcos.svd",
    "save_spectrum": "bigcos.svd", "load_spectrum": "bigcos.svd",
    "IngestOptions": "bigcos.matrix",
    "load_model": "bigcos.models",
    "Model": "bigcos.models",
    "fit": "bigcos.models",
    "fit_als": "bigcos.models",
    "fit_cosine": "bigcos.cosine_fit", "CosineOptions": "bigcos.cosine_fit",
    "neighbors": "bigcos.neighbor_lists",
    "top_n": "bigcos.blocked_topn", "read_neighbors": "bigcos.neighbor_lists",
    "Blocking": "bigcos.blocked_topn",
    "similar": "bigcos.similar_items",
    "simulate": "bigcos.simulator",
    "SimulationParams": "bigcos.simulator",
    "figure1": "bigcos.figures",
    "write_report": "bigcos.reports", "read_report_table": "bigcos.reports",
    "load_job": "bigcos.pipeline", "run_job": "bigcos.pipeline",
    "audit": "bigcos.embedding_audit",
}
# No public name may equal a submodule's name: importing ``bigcos.<name>`` would rebind the
# package attribute to the module (the reason the simulator and Figure 1 modules are named
# ``simulator`` and ``figures``).

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'bigcos' has no attribute {name!r}")
