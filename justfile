# mdagent developer recipes (`just` is installed with the project).

default:
    @just --list

# Install the project with test extras into the active environment.
install:
    python -m pip install -e '.[test]'

# The test suite (same as CI).
test *ARGS:
    pytest -q {{ARGS}}

# Lint and types.
lint:
    ruff check mdagent tests
    ruff format --check mdagent tests
    mypy

fmt:
    ruff format mdagent tests
    ruff check --fix mdagent tests

# Run the agent with the example config.
run CONFIG="config.toml":
    mdagent --config {{CONFIG}}

# Benchmarks: throughput, latency, memory against the fake venue.
bench *ARGS:
    mdagent bench {{ARGS}}

# Build the zipapp (dist/mdagent.pyz) with shiv.
zipapp:
    mkdir -p dist
    shiv -c mdagent -o dist/mdagent.pyz --reproducible .
