#!/usr/bin/env bash
# Makes this machine able to boot the test guest (tests/vm/run.sh calls it first; safe to run
# again and again: each step is skipped when its result is already there).
#
# Contract: on exit 0, these exist and match each other:
#   - qemu-system-x86_64 from bookworm-backports, the same version as the installed qemu-utils
#     (the image ships qemu-utils 10.0 from backports, which conflicts with bookworm's 7.2
#     system emulator); busybox-static, kmod (depmod), cpio, fio and nvme-cli from bookworm;
#   - target/vm/kernel/current -> KVER/, holding the Debian guest kernel that linux-image-amd64
#     depends on (resolved when it is first fetched, never pinned): vmlinux (the uncompressed
#     ELF, booted directly through PVH) and root/ (the package unpacked with dpkg -x, never
#     installed, with modules.dep made by depmod);
#   - target/vm/base.cpio: the base initramfs (busybox, and the kernel modules the guest loads
#     with their modules.dep closure);
#   - target/vm/fio.cpio: fio, qemu-io and nvme-cli with their shared libraries (78 MiB:
#     Debian's fio links ceph, gluster and ICU), in an archive of its own because it never
#     changes between runs.
# tests/vm/run.sh appends its per-run archive to these two.
# Anything that cannot be had exits non-zero with the reason: the guest phase never skips.
#
# Packages are looked up through a private apt sources list and lists directory under
# target/vm/apt (-o Dir::Etc::SourceList=... and friends), so the machine's own apt
# configuration is not changed. To take a newer guest kernel, remove target/vm/kernel. Runs
# hold target/vm/setup.lock, so two at once take turns.
set -euo pipefail
cd "$(dirname "$0")/../.."
VM="$PWD/target/vm"
HERE="$PWD/tests/vm"
mkdir -p "$VM"
# One set-up at a time: two runs starting together would build the same archives.
exec 9>"$VM/setup.lock"
flock 9

log() { echo "vm-setup: $*"; }
die() { echo "vm-setup: FAILED: $*" >&2; exit 1; }

SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo

# --- the private apt configuration ---------------------------------------------------------
APT="$VM/apt"
APT_OPTS=(
    -o "Dir::Etc::SourceList=$APT/sources.list"
    -o "Dir::Etc::SourceParts=$APT/sources.list.d"
    -o "Dir::State::Lists=$APT/lists"
    -o "Dir::Cache::archives=$APT/archives"
    # No binary caches: the machine's own /var/cache/apt/*.bin stay those of its own lists.
    -o "Dir::Cache::pkgcache="
    -o "Dir::Cache::srcpkgcache="
    -o "APT::Get::List-Cleanup=false"
    # Wait for another apt or dpkg to finish rather than fail at once.
    -o "DPkg::Lock::Timeout=300"
)
apt_ready=0
# Writes the private sources list and fetches its lists, once per run of this script.
apt_private_update() {
    [ "$apt_ready" -eq 0 ] || return 0
    mkdir -p "$APT/sources.list.d" "$APT/lists/partial" "$APT/archives/partial"
    local key=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -f "$key" ] || die "$key is missing (package debian-archive-keyring)"
    cat > "$APT/sources.list" <<SOURCES
deb [signed-by=$key] http://deb.debian.org/debian bookworm main
deb [signed-by=$key] http://deb.debian.org/debian bookworm-updates main
deb [signed-by=$key] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=$key] http://deb.debian.org/debian bookworm-backports main
SOURCES
    log "apt-get update (private lists in $APT)"
    $SUDO apt-get "${APT_OPTS[@]}" -qq update || die "apt-get update failed"
    apt_ready=1
}
apt_install() {
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" -qq -y --no-install-recommends \
        install "$@" >/dev/null
}

installed_version() {
    { dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null || true; } | awk '$1 == "ii" { print $2 }'
}

# --- host packages -------------------------------------------------------------------------
utils_version=$(installed_version qemu-utils)
[ -n "$utils_version" ] || die "qemu-utils is not installed (scripts/test.sh installs it)"
case "$utils_version" in *bpo12*) ;; *) die "qemu-utils $utils_version is not the bookworm-backports build this harness expects" ;; esac

qemu_version=$(installed_version qemu-system-x86)
if [ "$qemu_version" != "$utils_version" ]; then
    log "installing qemu-system-x86=$utils_version from bookworm-backports (found: ${qemu_version:-none})"
    apt_private_update
    # -t lets the emulator's own dependencies come from backports too.
    apt_install -t bookworm-backports "qemu-system-x86=$utils_version" \
        || die "cannot install qemu-system-x86=$utils_version (is it still in bookworm-backports?)"
fi
need=()
for pkg in busybox-static kmod cpio fio binutils nvme-cli; do
    [ -n "$(installed_version "$pkg")" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt_private_update
    apt_install "${need[@]}" || die "apt-get install ${need[*]} failed"
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing after the install"
[ -x /bin/busybox ] || die "/bin/busybox is missing after the install"

# --- the guest kernel ----------------------------------------------------------------------
KDIR="$VM/kernel"
if [ ! -f "$KDIR/current/vmlinux" ]; then
    mkdir -p "$KDIR/dl"
    apt_private_update
    image=$(apt-cache "${APT_OPTS[@]}" depends linux-image-amd64 \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-.*-amd64$/ { print $2; exit }')
    [ -n "$image" ] || die "cannot resolve the kernel package that linux-image-amd64 depends on"
    kver=${image#linux-image-}
    log "guest kernel: $image"
    rm -rf "$KDIR/dl"/*.deb "$KDIR/${kver:?}"
    (cd "$KDIR/dl" && apt-get "${APT_OPTS[@]}" -o APT::Sandbox::User=root -qq download "$image") \
        || die "apt-get download $image failed"
    mkdir -p "$KDIR/$kver/root"
    dpkg -x "$KDIR"/dl/"$image"_*.deb "$KDIR/$kver/root"
    depmod -b "$KDIR/$kver/root" "$kver" || die "depmod on the guest kernel failed"
    python3 "$HERE/extract_vmlinux.py" "$KDIR/$kver/root/boot/vmlinuz-$kver" "$KDIR/$kver/vmlinux.tmp" \
        || die "cannot extract vmlinux from vmlinuz-$kver"
    mv "$KDIR/$kver/vmlinux.tmp" "$KDIR/$kver/vmlinux"
    ln -sfn "$kver" "$KDIR/current"
    rm -f "$KDIR"/dl/*.deb
fi
kver=$(readlink "$KDIR/current")
KROOT="$KDIR/$kver/root"

# --- the base initramfs --------------------------------------------------------------------
# The modules the guest init loads; their dependencies come from modules.dep.
# brd and ext4 give the guest's /tmp a file system with O_DIRECT (tmpfs has none before 6.6).
MODULES=(nvme nvme-core vfio vfio-pci vfio_iommu_type1 nvme-tcp nvme-fabrics nvmet nvmet-tcp brd null_blk ext4 crc32c_generic)
recipe="kernel=$kver busybox=$(installed_version busybox-static) modules=${MODULES[*]} setup=$(sha256sum "$0" | cut -c1-16)"
if [ ! -f "$VM/base.cpio" ] || [ "$(cat "$VM/base.recipe" 2>/dev/null)" != "$recipe" ]; then
    log "building the base initramfs ($recipe)"
    stage="$VM/base.stage"
    rm -rf "$stage"
    mkdir -p "$stage"/{bin,sbin,dev,proc,sys,tmp,run,mnt,etc,root,lib/modules/"$kver"}
    cp /bin/busybox "$stage/bin/busybox"
    # Every applet as a link, so the per-run /init needs no set-up of its own.
    for applet in $(/bin/busybox --list); do
        [ -e "$stage/bin/$applet" ] || ln -s busybox "$stage/bin/$applet"
    done
    # The closure: modprobe --show-depends prints "insmod PATH" for each module in load order.
    for mod in "${MODULES[@]}"; do
        modprobe -d "$KROOT" -S "$kver" --show-depends "$mod" >"$VM/base.deps" \
            || die "module $mod is not in kernel $kver"
        awk '$1 == "insmod" { print $2 }' "$VM/base.deps" | while read -r path; do
            rel=${path#"$KROOT"/}
            mkdir -p "$stage/$(dirname "$rel")"
            case "$rel" in
                *.ko.xz) xz -dc "$path" >"$stage/${rel%.xz}" ;;
                *.ko.zst) zstd -qdc "$path" >"$stage/${rel%.zst}" ;;
                *.ko) cp "$path" "$stage/$rel" ;;
                *) die "unexpected module file $path" ;;
            esac
        done
    done
    cp "$KROOT/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$stage/lib/modules/$kver/" 2>/dev/null || true
    depmod -b "$stage" "$kver" || die "depmod on the initramfs modules failed"
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$VM/base.cpio.tmp"
    mv "$VM/base.cpio.tmp" "$VM/base.cpio"
    echo "$recipe" >"$VM/base.recipe"
    rm -rf "$stage" "$VM/base.deps"
fi
# --- fio, qemu-io (an NBD client for the guest tests) and nvme-cli, with their libraries ------
fio_recipe="fio=$(installed_version fio) qemu-utils=$(installed_version qemu-utils) nvme-cli=$(installed_version nvme-cli) closure=$(sha256sum "$HERE/closure.sh" | cut -c1-16)"
if [ ! -f "$VM/fio.cpio" ] || [ "$(cat "$VM/fio.recipe" 2>/dev/null)" != "$fio_recipe" ]; then
    log "building the fio archive ($fio_recipe)"
    stage="$VM/fio.stage"
    rm -rf "$stage"
    "$HERE/closure.sh" "$stage" /usr/bin/fio usr/bin/fio /usr/bin/qemu-io usr/bin/qemu-io \
        /usr/sbin/nvme usr/sbin/nvme \
        || die "cannot gather fio's, qemu-io's and nvme-cli's libraries"
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$VM/fio.cpio.tmp"
    mv "$VM/fio.cpio.tmp" "$VM/fio.cpio"
    echo "$fio_recipe" >"$VM/fio.recipe"
    rm -rf "$stage"
fi

log "ready: qemu $(installed_version qemu-system-x86), kernel $kver, base initramfs $(( $(stat -c %s "$VM/base.cpio") / 1024 )) KiB, fio $(( $(stat -c %s "$VM/fio.cpio") / 1048576 )) MiB"
