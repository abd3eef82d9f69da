# Sourced by perf/volume_compare.sh, perf/volume_by_state.sh and perf/volume_profile.sh: what
# they share.
#
# The configs: a pool of two malloc members holding the 1 GiB volume vol0, and two raw malloc
# bdevs of the same total size.
VOLUME_CFG=etc/volume-malloc-pool.json
RAW_CFG=etc/volume-malloc-raw.json
# A reactor ping's median round trip above this reads "far apart" (about 1.2-1.3 us, or the
# rarer 0.7 us state), below it "close" (about 0.15-0.3 us): see volume_compare.sh.
FAR_PING_US=0.6

# Succeeds when a short reactor ping reads STATE (far or close; always for any). Needs PERF
# (tidepool-perf) and RES (a scratch directory). A ping that fails stops the script: a state
# read from a stale or missing file would label runs wrongly.
in_state() {
  [ "$STATE" = any ] && return 0
  rm -f "$RES/ping.json"
  if ! "$PERF" --bench ping -t 0.1 -m 0x3 --json "$RES/ping.json" >/dev/null; then
    echo "the reactor ping failed; see above" >&2
    exit 1
  fi
  python3 -c 'import json,sys
p50 = json.load(open(sys.argv[1]))["ping"]["latency_us"]["p50"]
sys.exit(0 if (p50 > float(sys.argv[3])) == (sys.argv[2] == "far") else 1)' "$RES/ping.json" "$STATE" "$FAR_PING_US"
}
