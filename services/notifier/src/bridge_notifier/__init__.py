"""bridge_notifier: see services/notifier/README or docs/architecture.md."""
