"""bridge_gateway: see services/gateway/README or docs/architecture.md."""
