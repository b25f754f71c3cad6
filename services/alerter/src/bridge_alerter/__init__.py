"""bridge_alerter: see services/alerter/README or docs/architecture.md."""
