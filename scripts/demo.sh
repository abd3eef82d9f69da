#!/usr/bin/env bash
# The main job on the embedded RAM default: tidepoold with etc/tidepool.json (two 128 MiB
# malloc bdevs, a null bdev, an error bdev on Malloc1, Malloc0 exported over NBD on
# 127.0.0.1:10809), serving JSON-RPC on
# $TIDEPOOL_SOCK (default /var/tmp/tidepool.sock), in the foreground until Ctrl-C.
# Extra arguments go to tidepoold (for example: scripts/demo.sh -m 0x3).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p tidepool-tools -p tidepool-perf
SOCK=${TIDEPOOL_SOCK:-/var/tmp/tidepool.sock}
cat <<MSG
== tidepoold --json etc/tidepool.json -r $SOCK $*
   In another shell:   ./target/release/tpctl -s $SOCK bdev_get_bdevs
                       ./target/release/tpctl -s $SOCK bdev_malloc_create -b Malloc2 64 4096
                       ./target/release/tpctl -s $SOCK save_config
                       qemu-io -f raw nbd://127.0.0.1:10809/Malloc0 -c 'read -v 0 512'
   Ctrl-C stops the daemon cleanly.
MSG
exec ./target/release/tidepoold --json etc/tidepool.json -r "$SOCK" "$@"
