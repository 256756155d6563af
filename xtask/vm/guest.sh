#!/bin/sh
# Runs inside a virtme-ng guest, as root, on the host's root filesystem
# (read-only 9p). Makes the guest look like a distro server for the tests,
# then runs the command and leaves its exit status where the host reads it.
#
#   guest.sh MODULES_DIR RELEASE OUT_DIR
#
# MODULES_DIR holds the kernel's extracted modules (lib/modules/RELEASE),
# OUT_DIR is the host directory shared read-write, holding the command as
# the shell script OUT_DIR/cmd. Its output goes to OUT_DIR/output (the
# console does not carry it reliably) and its exit status to
# OUT_DIR/status. The command sees OUT_DIR as $RECLAIMSCOPE_VM_OUT.
set -u
mods=$1 release=$2 out=$3
export RECLAIMSCOPE_VM_OUT="$out"
log() { echo "guest: $*" >> "$out/output"; }
# The host waits for this line: a guest that never prints it did not boot.
log "$(uname -r) up after $(cut -d' ' -f1 /proc/uptime) s"

# virtme-ng mounts a tmpfs on /lib/modules; the kernel's own modules go there.
mkdir -p "/lib/modules/$release" && mount --bind "$mods" "/lib/modules/$release" || log "cannot bind $mods"
# What a distro server loads on demand; missing ones are reported, not fatal.
for m in virtio_blk sd_mod ext4 xfs loop fuse nbd dm_mod dm_zoned dm_crypt target_core_mod target_core_user tcm_loop ublk_drv \
    iscsi_tcp target_core_file iscsi_target_mod nvmet nvmet_tcp nvme_tcp nfsd nfs nfsv4; do
    modprobe -q "$m" 2>/dev/null || [ -d "/sys/module/$m" ] || {
        log "module $m not available on $release"
        echo "$m" >> "$out/missing-modules"
    }
done
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

# The lower filesystem of every stack is ext4 on a virtio-scsi disk, as on
# a server: the guest's /tmp and /var/tmp are tmpfs/overlay otherwise.
disk=$(findfs LABEL=rs-testbed 2>/dev/null)
if [ -n "$disk" ]; then
    mkdir -p /run/rs-disk && mount -t ext4 "$disk" /run/rs-disk || log "cannot mount $disk"
    mkdir -p /run/rs-disk/testbed /run/rs-disk/vartmp /tmp/reclaimscope-testbed
    mount --bind /run/rs-disk/testbed /tmp/reclaimscope-testbed
    mount --bind /run/rs-disk/vartmp /var/tmp
else
    log "no disk labelled rs-testbed: stacks sit on tmpfs"
fi
sh "$out/cmd" >> "$out/output" 2>&1
status=$?
# A test must never leave a task blocked behind it.
stuck=$(ps -eo stat=,pid=,comm= | awk '$1 ~ /^D/')
if [ -n "$stuck" ]; then
    log "tasks left in D state after the command:"
    echo "$stuck" >> "$out/output"
    [ $status -eq 0 ] && status=99
fi
dmesg | grep -A3 "blocked for more than" >> "$out/output"
echo $status > "$out/status"
