"""Bridge Lite on one machine: `just up` finds or starts PostgreSQL and Redis, applies the
schema, runs the five services and demo traffic under one supervisor, and prints how to
watch the events. Nothing here is imported by the services themselves."""
