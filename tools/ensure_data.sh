#!/usr/bin/env bash
# Real images that need no dataset site: Debian's dataset-fashion-mnist (the original IDX files in
# /usr/share/datasets/fashion-mnist). Installed when we are root with apt, as the browser is;
# otherwise iavutils says how else to provide them (IAV_DOWNLOAD=1, or files under $IAV_DATA).
set -euo pipefail
if [ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian dataset-fashion-mnist (real Fashion-MNIST files)"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null
else
  echo "note: dataset-fashion-mnist is not installed and we are not root; Fashion-MNIST then needs IAV_DOWNLOAD=1 or files under \$IAV_DATA/fashion-mnist/" >&2
fi
