#!/usr/bin/env bash
# The real-browser tests need Debian's chromium (never `playwright install`: it downloads a browser).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian chromium for the browser tests"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
else
  echo "warning: /usr/bin/chromium missing and not root; browser tests will be skipped (CI fails them)" >&2
fi
