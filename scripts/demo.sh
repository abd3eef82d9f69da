#!/usr/bin/env bash
# The main job on the embedded RAM default: tidepoold with etc/tidepool.json (two 256 MiB
# malloc bdevs, a null bdev, an error bdev on Malloc1, a pool of Malloc0 and EE_Malloc1 with
# a 256 MiB volume vol0, vol0 exported over NBD on 127.0.0.1:10809), serving JSON-RPC on
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
                       ./target/release/tpctl -s $SOCK volume_get_volumes
                       ./target/release/tpctl -s $SOCK save_config
                       qemu-io -f raw nbd://127.0.0.1:10809/vol0 -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M'
   Ctrl-C stops the daemon cleanly.
MSG
exec ./target/release/tidepoold --json etc/tidepool.json -r "$SOCK" "$@"
