"""bridge_etl: see services/etl_worker/README or docs/architecture.md."""
