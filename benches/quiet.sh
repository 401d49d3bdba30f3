# Sourced by the benchmark scripts: the hypervisor's stolen CPU time, and
# a wait for a quiet machine. On this VM the host may still be writing
# out the last large copy after `sync` returns; the run that follows then
# measures the host, not the tool (a compare.sh round right after the sets
# were recorded ran at 235 MiB/s against 296-377 later; a live baseline
# with nothing of hafill running once had 1,202 late frames).

# The machine's CPU time so far, all and stolen by the hypervisor (jiffies):
# on a virtual machine, stolen time delays threads no scheduler can help.
cpu_times() { awk '/^cpu / {t=0; for (i=2; i<=NF; i++) t+=$i; print t, $9}' /proc/stat; }

steal_pct() { # "t0 s0" "t1 s1"
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); d = y[1] - x[1]; if (d < 1) d = 1; printf "%.1f\n", (y[2] - x[2]) / d * 100 }'
}

# wait_for_quiet SPELL MAX: waits (at most MAX seconds) for a SPELL-second
# spell with under 0.5% of the CPU time stolen; prints how long it waited.
wait_for_quiet() {
    local spell=$1 max=$2 waited=0 a b s
    while [ "$waited" -lt "$max" ]; do
        a=$(cpu_times); sleep "$spell"; b=$(cpu_times); waited=$((waited + spell))
        s=$(steal_pct "$a" "$b")
        awk -v s="$s" 'BEGIN { exit !(s < 0.5) }' && break
    done
    echo "machine quiet after ${waited} s (steal ${s}%)"
}

# Free page reporting (virtio-balloon): the guest hands free memory back to
# the host in 2 MiB blocks, and the host discards it. On the development
# VM the hypervisor stole CPU time in the half-seconds in which memory was
# reported; 15 GiB of page cache freed by deleting the previous run's copy
# went on being reported for about 20 s after the delete, and the live run
# measured during it had 47 late frames, all while stolen
# (docs/benchmarks.md, "Virtual machine, 2026-11-23").
reported_kib() { cat /sys/module/page_reporting/parameters/reported_kib 2>/dev/null || echo 0; }

# wait_for_reported MAX: waits (at most MAX seconds) until no memory has
# been reported to the host for 3 s; prints what it waited for. Returns at
# once where the kernel has no page reporting.
wait_for_reported() {
    local max=$1 waited=0 r0 r1 total=0
    [ -r /sys/module/page_reporting/parameters/reported_kib ] || return 0
    r0=$(reported_kib)
    while [ "$waited" -lt "$max" ]; do
        sleep 3; waited=$((waited + 3))
        r1=$(reported_kib)
        [ "$r1" = "$r0" ] && break
        total=$((total + r1 - r0)); r0=$r1
    done
    echo "free memory reported to the host: $((total / 1024)) MiB, settled after ${waited} s"
}
