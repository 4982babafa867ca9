# Spine: every human and CI entry point. `just --list` shows them.
set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
py := venv / "bin/python"
bin := venv / "bin"

default:
    @just --list

# Create .venv and install Spine with its dev extras (idempotent; fast when done).
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    stamp="{{venv}}/.installed"
    if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi
    if [ ! -x "{{py}}" ]; then python3 -m venv "{{venv}}"; fi
    "{{py}}" -m pip install --quiet --disable-pip-version-check uv
    "{{bin}}/uv" pip install --quiet --python "{{py}}" -e ".[dev]"
    touch "$stamp"

# Run the end-to-end demo on the embedded NATS broker.
demo: setup
    {{bin}}/spine demo

# Run the whole test suite (unit, contract against memory + real nats-server, CLI).
test *ARGS: setup
    {{py}} -m pytest {{ARGS}}

# Lint: ruff (lint + format check) and mypy strict.
lint: setup
    {{bin}}/ruff check .
    {{bin}}/ruff format --check .
    {{bin}}/mypy

# Format the code.
fmt: setup
    {{bin}}/ruff format .
    {{bin}}/ruff check --fix .

# Benchmarks (JSON lines on stdout). `just bench --quick` for a short run.
bench *ARGS: setup
    {{py}} benchmarks/bus.py {{ARGS}}
    {{py}} benchmarks/archive.py {{ARGS}}
    {{py}} benchmarks/decisions.py {{ARGS}}

# Stop the embedded broker and remove local data (.spine/).
clean:
    -{{bin}}/spine broker stop
    rm -rf .spine
