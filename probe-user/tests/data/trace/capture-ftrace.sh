#!/bin/sh
# Re-captures the ftrace text fixtures that postmortem::ftrace's tests parse:
# memcg reclaim from a dd writing 300 MiB inside a 64 MiB cgroup-v1 memory
# cgroup, traced two ways:
#   ftrace-memcg-dd.trace   the tracefs `trace` file (record-tgid on)
#   ftrace-memcg-dd.report  `trace-cmd report` of a `trace-cmd extract`
# `trace-cmd record` cannot run on this VM (its write to
# /proc/sys/kernel/ftrace_enabled fails with EPERM), so the trace-cmd capture
# is taken from a tracefs instance with `trace-cmd extract -B`; that is why the
# report's lines carry the instance name as a prefix.
# The GFP name table the tests decode with is ../gfp_print_fmt_<release>.txt, a
# copy of events/vmscan/mm_vmscan_direct_reclaim_begin/format.
# Needs root, a cgroup-v1 memory controller and trace-cmd. Everything it sets
# up (tracefs instances, cgroup, data file) is removed on exit.
set -eu

OUT=$(cd "$(dirname "$0")" && pwd)
T=/sys/kernel/tracing
NAME=rsfix-$$
CG=/sys/fs/cgroup/memory/$NAME
DATA=/tmp/$NAME.dat
EVENTS="vmscan/mm_vmscan_direct_reclaim_begin vmscan/mm_vmscan_direct_reclaim_end
vmscan/mm_vmscan_memcg_reclaim_begin vmscan/mm_vmscan_memcg_reclaim_end
vmscan/mm_shrink_slab_start vmscan/mm_vmscan_write_folio
writeback/folio_wait_writeback sched/sched_switch"

cleanup() {
    for i in "$T/instances/$NAME-a" "$T/instances/$NAME-b"; do
        [ -d "$i" ] && { echo 0 > "$i/tracing_on"; rmdir "$i"; }
    done
    if [ -d "$CG" ]; then
        for p in $(cat "$CG/cgroup.procs"); do echo "$p" > /sys/fs/cgroup/memory/cgroup.procs; done
        rmdir "$CG"
    fi
    rm -f "$DATA" "$OUT/trace.dat"
}
trap cleanup EXIT INT TERM

# Runs the workload with the events of tracefs instance $1 on, traced for the
# workload's process tree only.
traced_workload() {
    inst=$T/instances/$1
    mkdir "$inst"
    echo 8192 > "$inst/buffer_size_kb"
    echo 1 > "$inst/options/record-tgid" 2>/dev/null || echo "record-tgid not settable here" >&2
    echo 1 > "$inst/options/event-fork"
    for e in $EVENTS; do echo 1 > "$inst/events/$e/enable"; done
    sh -c "echo \$\$ > $inst/set_event_pid && echo \$\$ > $CG/cgroup.procs && echo 1 > $inst/tracing_on &&
           exec timeout 120 dd if=/dev/zero of=$DATA bs=1M count=300 conv=fsync"
    echo 0 > "$inst/tracing_on"
    rm -f "$DATA"
}

mountpoint -q $T || mount -t tracefs nodev $T
mkdir "$CG"
echo 64M > "$CG/memory.limit_in_bytes"

traced_workload "$NAME-a"
cat "$T/instances/$NAME-a/trace" > "$OUT/ftrace-memcg-dd.trace"
rmdir "$T/instances/$NAME-a"

traced_workload "$NAME-b"
timeout 60 trace-cmd extract -B "$NAME-b" -o "$OUT/trace.dat" > /dev/null 2>&1
timeout 60 trace-cmd report -i "$OUT/trace.dat" > "$OUT/ftrace-memcg-dd.report"

wc -l "$OUT"/ftrace-memcg-dd.*
