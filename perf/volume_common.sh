# Sourced by perf/volume_compare.sh and perf/volume_by_state.sh: what the two share.
#
# The configs: a pool of two malloc members holding the 1 GiB volume vol0, and two raw malloc
# bdevs of the same total size.
VOLUME_CFG=etc/volume-malloc-pool.json
RAW_CFG=etc/volume-malloc-raw.json
# A reactor ping's median round trip above this reads "far apart" (about 1.2-1.3 us, or the
# rarer 0.7 us state), below it "close" (about 0.15-0.3 us): see volume_compare.sh.
FAR_PING_US=0.6
