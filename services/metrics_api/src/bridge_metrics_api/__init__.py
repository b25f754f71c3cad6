"""bridge_metrics_api: see services/metrics_api/README or docs/architecture.md."""
