"""bridge_etl: audit logs from the source database into the time-series store.

See the "ETL worker" sections of docs/architecture.md (design, delivery guarantee) and
docs/runbook.md (settings, operations).
"""
