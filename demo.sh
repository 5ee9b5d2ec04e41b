#!/usr/bin/env bash
# Quick start 1: count primes in parallel on the embedded queue and compare with a serial run.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup-venv.sh ""
exec .venv/bin/python -m core4nb demo "$@"
