"""The policy's property tests at soak length: bodies from the Engine API's schema, the
daemon as the oracle, many more examples than the test command runs.

    /opt/plugstrip/bin/python -m bench.policy_soak [--examples N] [--quick]

Runs tests/test_policy_schema_property.py (creates, updates, execs and answers generated
from proxy/engine_api.json) and tests/test_policy_property.py with ``N`` examples each
(default 2,000; ``--quick`` 200), on the tests' own private dockerd, and prints what the
examples did (created, refused by plugstrip, refused by the daemon, ran) and the time.
A failing example is printed by Hypothesis, shrunk, with the body that got through.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATS = ["--hypothesis-show-statistics"]
MODULES = ["tests/test_policy_schema_property.py", "tests/test_policy_property.py"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 examples")
    args = parser.parse_args()
    examples = 200 if args.quick else args.examples
    env = {**os.environ, "PLUGSTRIP_PROPERTY_EXAMPLES": str(examples)}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *STATS, *MODULES],
        cwd=ROOT,
        env=env,
        check=False,
    )
    took = time.monotonic() - started
    print(f"policy soak: {examples} examples a property, {took:.0f} s, exit {proc.returncode}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
