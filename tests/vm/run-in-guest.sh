#!/bin/bash
# Run a test script inside a throw-away qemu guest booted with the host's
# Debian kernel, so it can use device-mapper (dm-snapshot, dm-thin) and LVM
# on a scratch virtual disk without touching the host.
#
# Usage:
#   tests/vm/run-in-guest.sh [--disk-size SIZE] [--disks N] [--timeout SECS]
#                            [--memory MB] SCRIPT RESULTDIR [ARGS...]
#
# The guest has no root image of its own: the host's / is shared read-only
# over 9p and the guest chroots into it, so every host file (the repository,
# the lvmsync-rs binary, lvm2, bash, python3) is visible at the same path as
# on the host, as it was when the guest booted.  The repository is also
# shared on its own, read-only, at its host path, so a checkout under /tmp
# works too.  Inside the chroot, /run,
# /tmp, /etc/lvm and /var/lib are tmpfs, /etc/lvm/lvm.conf is a minimal
# configuration for running LVM without udev, lvmetad, lvmpolld or dmeventd.
#
# In the guest `bash SCRIPT ARGS...` runs with:
#   cwd      the repository root
#   RESULTS  RESULTDIR as mounted in the guest (writable, /tmp/results)
#   LVMSYNC  $LVMSYNC from the caller (made absolute), default
#            <repo>/target/release/lvmsync-rs
#   PATH     /usr/sbin:/usr/bin:/sbin:/bin
# and scratch disks /dev/vda, /dev/vdb, ... (sparse, SIZE each, default 1G).
#
# Written to RESULTDIR:
#   guest.log    stdout and stderr of the script
#   console.log  the guest's serial console (kernel and init messages)
#   rc           the script's exit status (absent if the guest did not finish)
#
# Exit status: the script's, or 2 for usage errors / missing host packages,
# or 3 if the guest did not boot or did not finish in time.
#
# A script may carry default options in a line near its top, e.g.
#   # vm-options: --disks 2 --disk-size 2G
# options given on the command line win.
#
# Environment:
#   VM_KERNEL        kernel image to boot (default: newest /boot/vmlinuz-*
#                    that has a matching /lib/modules directory)
#   VM_CACHE_DIR     where built initramfs images are cached
#                    (default <repo>/target/vm-cache)
#   RUST_BACKTRACE, RUST_LOG are passed through to the guest when set.
set -euo pipefail

prog=${0##*/}
die() { echo "$prog: $*" >&2; exit 2; }
usage() {
    sed -n '6,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

disk_size=
disks=
timeout_secs=
memory=

parse_opts() {
    # Sets the option variables from "$@" (only those not already set) and
    # leaves the count of consumed words in $consumed.
    local n=0
    while [ $# -gt 0 ]; do
        case $1 in
            --disk-size) [ $# -ge 2 ] || usage; [ -n "$disk_size" ] || disk_size=$2; shift 2; n=$((n + 2)) ;;
            --disk-size=*) [ -n "$disk_size" ] || disk_size=${1#*=}; shift; n=$((n + 1)) ;;
            --disks) [ $# -ge 2 ] || usage; [ -n "$disks" ] || disks=$2; shift 2; n=$((n + 2)) ;;
            --disks=*) [ -n "$disks" ] || disks=${1#*=}; shift; n=$((n + 1)) ;;
            --timeout) [ $# -ge 2 ] || usage; [ -n "$timeout_secs" ] || timeout_secs=$2; shift 2; n=$((n + 2)) ;;
            --timeout=*) [ -n "$timeout_secs" ] || timeout_secs=${1#*=}; shift; n=$((n + 1)) ;;
            --memory) [ $# -ge 2 ] || usage; [ -n "$memory" ] || memory=$2; shift 2; n=$((n + 2)) ;;
            --memory=*) [ -n "$memory" ] || memory=${1#*=}; shift; n=$((n + 1)) ;;
            -h|--help) usage ;;
            --) shift; n=$((n + 1)); break ;;
            -*) die "unknown option: $1" ;;
            *) break ;;
        esac
    done
    consumed=$n
}

consumed=0
parse_opts "$@"
shift "$consumed"
[ $# -ge 2 ] || usage
script=$1
resultdir=$2
shift 2

[ -f "$script" ] || die "no such script: $script"
script=$(realpath "$script")

# Defaults declared by the script itself.
opt_line=$(head -n 30 "$script" | sed -n 's/^# vm-options:[[:space:]]*//p' | head -n 1)
if [ -n "$opt_line" ]; then
    # shellcheck disable=SC2086
    parse_opts $opt_line
fi
disk_size=${disk_size:-1G}
disks=${disks:-1}
timeout_secs=${timeout_secs:-900}
memory=${memory:-1024}
case $disks in ''|*[!0-9]*) die "--disks wants a number" ;; esac
[ "$disks" -ge 1 ] && [ "$disks" -le 8 ] || die "--disks must be 1..8"
case $timeout_secs in ''|*[!0-9]*) die "--timeout wants seconds" ;; esac

mkdir -p "$resultdir"
resultdir=$(realpath "$resultdir")
rm -f "$resultdir/rc" "$resultdir/guest.log" "$resultdir/console.log"

lvmsync=${LVMSYNC:-$repo/target/release/lvmsync-rs}
case $lvmsync in
    /*) ;;
    */*) lvmsync=$(realpath -m "$lvmsync") ;;
    *) lvmsync=$(command -v "$lvmsync" || echo "$lvmsync") ;;
esac

# ---------------------------------------------------------------- host checks
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v modprobe >/dev/null || missing+=(kmod)
command -v lvm >/dev/null || [ -x /sbin/lvm ] || missing+=(lvm2)
command -v cpio >/dev/null || missing+=(cpio)
command -v timeout >/dev/null || missing+=(coreutils)
# The initramfs needs a statically linked busybox (Debian's busybox-static).
bb_ldd=$(LC_ALL=C ldd /bin/busybox 2>&1 || true)
case $bb_ldd in
    *"not a dynamic executable"*|*"statically linked"*) ;;
    *) missing+=(busybox-static) ;;
esac

if [ -n "${VM_KERNEL:-}" ]; then
    kernel=$VM_KERNEL
    [ -f "$kernel" ] || die "VM_KERNEL=$kernel does not exist"
    kver=${kernel##*/vmlinuz-}
else
    kernel=
    kver=
    # Newest kernel image with a matching module tree.
    while read -r k; do
        v=${k##*/vmlinuz-}
        if [ -d "/lib/modules/$v/kernel" ]; then kernel=$k; kver=$v; fi
    done < <(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V)
    if [ -z "$kernel" ]; then
        missing+=(linux-image-amd64)
    fi
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "$prog: missing host packages; install them with: apt-get install ${missing[*]}" >&2
    exit 2
fi
[ -r "$kernel" ] || die "cannot read $kernel (run as root?)"
[ -d "/lib/modules/$kver" ] || die "no /lib/modules/$kver for $kernel; apt-get install linux-image-amd64"

# ------------------------------------------------------------- initramfs
init_script() {
    cat <<'INIT'
#!/bin/busybox sh
# Minimal init: load modules, share the host root, chroot and run the test.
export PATH=/bin
msg() { echo "vm-init: $*"; }
stop() { sync; msg "powering off"; poweroff -f; sleep 5; exit 1; }
fail() { msg "FATAL: $*"; stop; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
msg "kernel $(uname -r) up"

while read -r ko args; do
    [ -n "$ko" ] || continue
    name=${ko##*/}
    # Built-in or already loaded: fine.  Optional accelerated variants
    # (crc32c-intel without SSE4.2 under TCG) may fail: fine too.
    out=$(insmod "$ko" $args 2>&1) || case $out in
        *"File exists"*) ;;
        *) msg "insmod $name: $out" ;;
    esac
done < /modules.list

R=/newroot
mkdir -p $R
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro,cache=loose hostroot $R \
    || fail "cannot mount the host root over 9p"
for d in proc sys dev; do
    mount -o bind /$d $R/$d || fail "bind /$d"
done
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm 2>/dev/null
mount -t tmpfs -o mode=0755 tmpfs $R/run || fail "tmpfs /run"
mount -t tmpfs -o mode=1777 tmpfs $R/tmp || fail "tmpfs /tmp"
mount -t tmpfs -o mode=0755 tmpfs $R/etc/lvm || fail "tmpfs /etc/lvm"
mount -t tmpfs -o mode=0755 tmpfs $R/var/lib || fail "tmpfs /var/lib"
[ -L $R/var/lock ] || mount -t tmpfs -o mode=1777 tmpfs $R/var/lock 2>/dev/null
[ -L $R/var/tmp ] || mount -t tmpfs -o mode=1777 tmpfs $R/var/tmp 2>/dev/null
mkdir -p $R/run/lock/lvm $R/run/lvm $R/run/vmctl $R/tmp/results $R/etc/lvm/profile
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 vmctl $R/run/vmctl \
    || fail "cannot mount the control share"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results $R/tmp/results \
    || fail "cannot mount the results share"
# The repository, at its host path: it may lie under a directory the
# mounts above cover (a clone in /tmp, say).
repo_path=$(cat $R/run/vmctl/repo-path)
mkdir -p "$R$repo_path" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro,cache=loose repo "$R$repo_path" \
    || fail "cannot mount the repository share at $repo_path"

cat > $R/etc/lvm/lvm.conf <<'EOF'
# LVM configuration for a guest without udev, lvmetad, lvmpolld or dmeventd.
devices {
    dir = "/dev"
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
    use_devicesfile = 0
    global_filter = [ "a|^/dev/vd[a-z]+[0-9]*$|", "r|.*|" ]
    scan_lvs = 0
    multipath_component_detection = 0
    md_component_detection = 0
    fw_raid_component_detection = 0
}
global {
    use_lvmpolld = 0
    use_lvmlockd = 0
    event_activation = 0
    locking_dir = "/run/lock/lvm"
    system_id_source = "none"
}
activation {
    udev_sync = 0
    udev_rules = 0
    verify_udev_operations = 0
    monitoring = 0
    polling_interval = 1
}
backup {
    backup = 0
    archive = 0
}
log {
    syslog = 0
}
EOF

msg "running test"
chroot $R /bin/bash /run/vmctl/cmd.sh
rc=$?
echo $rc > $R/run/vmctl/rc
msg "test exited with status $rc"
stop
INIT
}

cache_root=${VM_CACHE_DIR:-$repo/target/vm-cache}
if ! mkdir -p "$cache_root" 2>/dev/null || [ ! -w "$cache_root" ]; then
    cache_root=${TMPDIR:-/tmp}/lvmsync-vm-cache
    mkdir -p "$cache_root"
fi
key=$( { init_script; echo "$kver"; stat -c '%s %Y' /bin/busybox "$kernel"; } | sha256sum | cut -c1-16)
initrd=$cache_root/initrd-$kver-$key.img

build_initrd() {
    local out=$1 root ko mods line path
    root=$(mktemp -d "$cache_root/build.XXXXXX")
    mkdir -p "$root"/{bin,dev,proc,sys,newroot,lib/modules}
    cp /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    init_script > "$root/init"
    chmod 755 "$root/init"

    mods=()
    for m in virtio_pci virtio_blk 9pnet_virtio 9p dm-mod dm-snapshot dm-bufio dm-thin-pool; do
        while read -r line; do
            case $line in
                insmod\ *) path=${line#insmod }; path=${path%% *}; mods+=("$path") ;;
            esac
        done < <(modprobe -S "$kver" --show-depends "$m" 2>/dev/null || true)
    done
    : > "$root/modules.list"
    local seen=" "
    for path in "${mods[@]}"; do
        case $seen in *" $path "*) continue ;; esac
        seen="$seen$path "
        ko=$(basename "$path")
        case $ko in
            *.ko.xz) xz -dc "$path" > "$root/lib/modules/${ko%.xz}"; ko=${ko%.xz} ;;
            *.ko.zst) zstd -qdc "$path" > "$root/lib/modules/${ko%.zst}"; ko=${ko%.zst} ;;
            *.ko.gz) gzip -dc "$path" > "$root/lib/modules/${ko%.gz}"; ko=${ko%.gz} ;;
            *) cp "$path" "$root/lib/modules/$ko" ;;
        esac
        echo "/lib/modules/$ko" >> "$root/modules.list"
    done
    (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) | gzip -1 > "$out.tmp.$$"
    mv -f "$out.tmp.$$" "$out"
    rm -rf "$root"
}

if [ ! -s "$initrd" ]; then
    build_initrd "$initrd"
fi

# ------------------------------------------------------------------- run
work=$(mktemp -d "${TMPDIR:-/tmp}/lvmsync-vm.XXXXXX")
qpid=
cleanup() {
    if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
        kill "$qpid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/ctl"
printf '%s\n' "$repo" > "$work/ctl/repo-path"

# Paths the guest covers with its own mounts are not visible there: copy
# the script and the binary into the control share when they live there.
guest_path() {
    local p=$1 what=$2
    case $p in
        /tmp/*|/run/*|/var/lib/*|/var/tmp/*|/var/lock/*|/etc/lvm/*|/dev/*|/proc/*|/sys/*)
            if [ -f "$p" ]; then
                cp "$p" "$work/ctl/$what"
                echo "/run/vmctl/$what"
                return
            fi ;;
    esac
    echo "$p"
}
script_in_guest=$(guest_path "$script" script.sh)
lvmsync_in_guest=$(guest_path "$lvmsync" lvmsync.bin)

{
    echo "exec >/tmp/results/guest.log 2>&1"
    printf 'cd %q || exit 125\n' "$repo"
    printf 'exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C TERM=dumb'
    printf ' %q' "RESULTS=/tmp/results" "LVMSYNC=$lvmsync_in_guest"
    [ -z "${RUST_BACKTRACE:-}" ] || printf ' %q' "RUST_BACKTRACE=$RUST_BACKTRACE"
    [ -z "${RUST_LOG:-}" ] || printf ' %q' "RUST_LOG=$RUST_LOG"
    printf ' bash %q' "$script_in_guest"
    [ $# -eq 0 ] || printf ' %q' "$@"
    echo
} > "$work/ctl/cmd.sh"

drive_args=()
for ((i = 0; i < disks; i++)); do
    truncate -s "$disk_size" "$work/disk$i.img"
    drive_args+=(-drive "file=$work/disk$i.img,if=virtio,format=raw,cache=unsafe")
done

start=$(date +%s)
set +e
timeout -k 10 "$timeout_secs" qemu-system-x86_64 \
    -accel tcg -m "$memory" -smp 1 \
    -nodefaults -display none -no-reboot \
    -serial "file:$resultdir/console.log" -monitor none \
    -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 quiet panic=-1" \
    -fsdev local,id=h,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=h,mount_tag=hostroot \
    -fsdev "local,id=c,path=$work/ctl,security_model=none" \
    -device virtio-9p-pci,fsdev=c,mount_tag=vmctl \
    -fsdev "local,id=r,path=$resultdir,security_model=none" \
    -device virtio-9p-pci,fsdev=r,mount_tag=results \
    -fsdev "local,id=g,path=$repo,security_model=none,readonly=on,multidevs=remap" \
    -device virtio-9p-pci,fsdev=g,mount_tag=repo \
    "${drive_args[@]}" \
    </dev/null >"$work/qemu.out" 2>&1 &
qpid=$!
wait "$qpid"
qrc=$?
qpid=
set -e
elapsed=$(( $(date +%s) - start ))

if [ -s "$work/ctl/rc" ]; then
    rc=$(cat "$work/ctl/rc")
    echo "$rc" > "$resultdir/rc"
    echo "$prog: ${script##*/} exited with status $rc after ${elapsed}s (results in $resultdir)" >&2
    exit "$rc"
fi

if [ "$qrc" -eq 124 ] || [ "$qrc" -eq 137 ]; then
    reason="guest did not finish within ${timeout_secs}s"
elif grep -q 'vm-init: FATAL' "$resultdir/console.log" 2>/dev/null; then
    reason="guest init failed: $(grep -m1 'vm-init: FATAL' "$resultdir/console.log" | sed 's/.*FATAL: //')"
elif grep -q 'Kernel panic' "$resultdir/console.log" 2>/dev/null; then
    reason="guest kernel panicked"
elif [ "$qrc" -ne 0 ]; then
    reason="qemu failed with status $qrc: $(head -c 300 "$work/qemu.out" | tr '\n' ' ')"
else
    reason="guest powered off without reporting a result"
fi
echo "$prog: $reason; see $resultdir/console.log" >&2
exit 3
