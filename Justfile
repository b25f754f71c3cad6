# Bridge Lite — the verbs people type. `just --list` shows them all.

set dotenv-load := false

# install everything (Python deps into .venv; PGlite with TimescaleDB for the tests, if npm is there)
setup:
    uv sync --locked
    if command -v npm >/dev/null; then npm ci --prefix tests/support/pglite --no-audit --no-fund --silent; fi

# run the test suite against real PostgreSQL and Redis (BRIDGE_TEST_DSN / BRIDGE_TEST_REDIS_URL or local)
test *ARGS:
    uv run pytest -n 2 --dist loadfile {{ARGS}}

# ruff + mypy (strict on src/)
lint:
    uv run ruff check .
    uv run ruff format --check .
    uv run mypy

# format the code
fmt:
    uv run ruff check --fix .
    uv run ruff format .

# apply the schema to the source and target databases
migrate *ARGS:
    uv run bridge-migrate {{ARGS}}

# bring the whole suite up on this machine, with demo traffic (Ctrl-C stops it all)
up *ARGS:
    uv sync --inexact --quiet
    exec uv run bridge-up {{ARGS}}

# write realistic demo traffic (intents, audit logs, errors, corrections) into the source DB
demo *ARGS:
    uv run bridge-demo {{ARGS}}

# run the benchmarks and record results in docs/benchmarks.md
bench *ARGS:
    uv run python -m bench {{ARGS}}

# soak the whole suite under steady load (default 10m; e.g. `just soak 12h`), chart in docs/benchmarks.md
soak DURATION="10m" *ARGS:
    uv run python -m bench soak --duration={{DURATION}} {{ARGS}}

# regenerate the metrics API section of docs/api.md from its OpenAPI document
apidoc:
    uv run python -m bridge_metrics_api.apidoc --write docs/api.md
