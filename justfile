# mdagent developer recipes (`just` comes with the lock's dev tools).

default:
    @just --list

# Install exactly the locked versions (runtime + test + dev) into the active
# environment, then mdagent itself without touching those pins.
install:
    python -m pip install --require-hashes -r requirements/dev.lock
    python -m pip install --no-deps --no-build-isolation -e .

# Re-resolve the locks after a pyproject.toml change (keeps pins that still fit).
lock:
    bash requirements/lock.sh refresh

# Move every pin to the newest release the ranges allow.
lock-upgrade:
    bash requirements/lock.sh upgrade

# Fail when pyproject.toml and the locks disagree (CI).
lock-check:
    bash requirements/lock.sh check

# The test suite (README's test command; CI runs it).
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

# Build the zipapp (dist/mdagent.pyz) from the runtime lock: exactly the
# versions CI tested, binary wheels only, then mdagent itself.
zipapp:
    rm -rf build/zipapp-site
    mkdir -p build dist
    python -m pip install --quiet --target build/zipapp-site --require-hashes --only-binary :all: -r requirements/runtime.lock
    python -m pip install --quiet --target build/zipapp-site --upgrade --no-deps --no-build-isolation .
    shiv --site-packages build/zipapp-site -c mdagent -o dist/mdagent.pyz --reproducible
