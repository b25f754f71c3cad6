# Bridge Lite — the verbs people type. `just --list` shows them all.

set dotenv-load := false

# install everything (Python deps into .venv)
setup:
    uv sync --locked

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

# bring the whole suite up on this machine
up:
    @echo "just up: not yet — see issue 'Run it'"

# run the benchmarks and record results in docs/benchmarks.md
bench *ARGS:
    uv run python -m bench {{ARGS}}
