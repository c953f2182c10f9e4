"""Deploy and monitor: serve a model behind an OpenAI-compatible API, log every exchange to a
Parquet event log, export Prometheus metrics (serving and ingest from models served elsewhere).
"""
