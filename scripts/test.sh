#!/usr/bin/env bash
# npm test's last step: runs the command it is given (node's test runner over the TypeScript tests), then pytest
# over test/python whatever that command's outcome, so that the log ends with both summaries. Exits non-zero when
# either failed.
#   scripts/test.sh node --test FILE...     (package.json's "test" passes its node command line)
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

"$@"
node_status=$?

python=test/python/.venv/bin/python
if [ -x "$python" ]; then
  PYTHONDONTWRITEBYTECODE=1 "$python" -m pytest -q -ra -p no:cacheprovider test/python
  pytest_status=$?
else
  echo "test/python: no virtualenv at $python: run scripts/setup.sh (it installs test/python/requirements.txt)" >&2
  pytest_status=1
fi

if [ "$node_status" -ne 0 ] || [ "$pytest_status" -ne 0 ]; then
  echo "npm test: failed (node's test runner: exit $node_status; pytest: exit $pytest_status)" >&2
  exit 1
fi
