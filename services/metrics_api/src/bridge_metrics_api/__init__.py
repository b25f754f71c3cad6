"""bridge_metrics_api: the ops HTTP API, the live dashboard page and the metrics snapshot.

See docs/architecture.md ("Metrics API") for where each figure comes from and
docs/api.md for the endpoints.
"""
