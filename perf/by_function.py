"""Prints two per-function profiles side by side, raw against volume.

perf/volume_profile.sh (reactor time per I/O, from `perf record`) and
perf/router_instructions.sh (instructions per I/O, under callgrind) each reduce their run to
a dict of function name -> cost per I/O, and print it with `print_side_by_side`.
"""


def print_side_by_side(raw, volume, what, top):
    """The `top` functions whose cost differs most between `raw` and `volume`, largest first."""
    print(f"\n{'raw':>7} {'volume':>7} {'added':>7}  function ({what})")
    keys = sorted(set(raw) | set(volume), key=lambda k: -abs(volume.get(k, 0) - raw.get(k, 0)))
    for k in keys[:top]:
        a, b = raw.get(k, 0), volume.get(k, 0)
        print(f"{a:7.1f} {b:7.1f} {b - a:+7.1f}  {k}")
