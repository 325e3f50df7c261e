#!/usr/bin/env bash
# Installs the pinned OpenAI SDKs that tests/sdk.rs drives against keyless:
#   - openai-python (requirements.txt) into tests/sdk/.venv
#   - openai-node (package.json + package-lock.json) into tests/sdk/node_modules, by `npm ci`
# Idempotent and fast when nothing changed: each install leaves a stamp (the hash of its
# pin file and the interpreter's version) and is redone only when the stamp differs.
# Safe to run concurrently (parallel tests, two cargo runs): one run at a time holds a lock.
# Exits non-zero, saying what is missing, when python3 (3.11+), node (20+) or npm is absent
# or an install fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

die() {
    echo "tests/sdk/setup.sh: $*" >&2
    exit 1
}

# A lock on this directory itself, so the lock leaves no file behind.
exec 9<"$here"
flock -w 600 9 || die "waited 10 minutes for another setup.sh to finish"

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 is not on PATH; $2"
}
need python3 "the SDK tests need Python 3.11 or later (Debian: apt-get install python3 python3-venv)"
need node "the SDK tests need Node.js 20 or later (Debian: apt-get install nodejs npm)"
need npm "the SDK tests need npm (Debian: apt-get install npm)"
# openai-python 3.x runs on httpx2, which needs Python 3.11.
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$(python3 --version 2>&1) is too old: openai-python needs Python 3.11 or later"
# openai-node 7.x needs Node 22; 6.49.0, the last 6.x, is pinned for Node 20.
node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' ||
    die "Node.js $(node --version) is too old: openai-node 6.x needs Node 20 or later"

stamp_of() { # file, interpreter version -> one line
    echo "$(sha256sum "$1" | cut -d' ' -f1) $2"
}

# ---- Python ----------------------------------------------------------------------------
py_stamp="$(stamp_of requirements.txt "$(python3 --version 2>&1)")"
if [[ -x .venv/bin/python && "$(cat .venv/.keyless-stamp 2>/dev/null)" == "$py_stamp" ]]; then
    echo "setup.sh: openai-python already installed in tests/sdk/.venv"
else
    echo "setup.sh: installing openai-python into tests/sdk/.venv"
    python3 -m venv --clear .venv ||
        die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-input -r requirements.txt ||
        die "pip install -r tests/sdk/requirements.txt failed"
    echo "$py_stamp" >.venv/.keyless-stamp
fi

# ---- Node ------------------------------------------------------------------------------
node_stamp="$(stamp_of package-lock.json "node $(node --version)")"
if [[ -d node_modules/openai && "$(cat node_modules/.keyless-stamp 2>/dev/null)" == "$node_stamp" ]]; then
    echo "setup.sh: openai-node already installed in tests/sdk/node_modules"
else
    echo "setup.sh: installing openai-node into tests/sdk/node_modules"
    npm ci --no-audit --no-fund --loglevel=error || die "npm ci in tests/sdk failed"
    echo "$node_stamp" >node_modules/.keyless-stamp
fi
