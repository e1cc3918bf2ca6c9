#!/usr/bin/env bash
# Makes sure Debian's dataset-fashion-mnist files are present; installs the package when we are root.
set -euo pipefail
dir="${1:-/usr/share/datasets/fashion-mnist}"
if [ -f "$dir/train-images-idx3-ubyte.gz" ] && [ -f "$dir/t10k-labels-idx1-ubyte.gz" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Fashion-MNIST not found under $dir; installing Debian's dataset-fashion-mnist ..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  [ -f "$dir/train-images-idx3-ubyte.gz" ] && exit 0
fi
echo "Fashion-MNIST is missing under $dir. Install it with:" >&2
echo "    sudo apt-get install dataset-fashion-mnist" >&2
echo "or point the data path elsewhere: make FMNIST_DIR=/path/with/idx-files ..." >&2
exit 1
