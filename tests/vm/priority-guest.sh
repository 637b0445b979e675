#!/usr/bin/env bash
# Runs INSIDE the VM (tests/vm/priority-lab.sh): the issue-9 measurements on a throttled
# NVMe. An LVM thin pool on /dev/nvme0n1, one streaming and four batch thin LVs (prefilled,
# so reads reach the disk), each read by fio (4 KiB randread, libaio, direct, iodepth 8)
# from its own kubelet-shaped pod cgroup: streaming under kubepods-burstable.slice, batch
# under kubepods-besteffort.slice. Phases: streaming solo; batch alone; static io.max caps
# (the literal 2000 default and the device-proportional cap); iocost weights (across QoS
# slices, within one slice, with slice weights); the adaptive io.max loop
# (the priority_lab example): all five, batch alone, a reaction run. Results and summary.txt go to
# RESULTS_DIR.
#
#   priority-guest.sh RESULTS_DIR
set -euo pipefail
out="${1:?usage: priority-guest.sh RESULTS_DIR}"
here="${IOLANE_LAB_HERE:?}"
secs="${IOLANE_LAB_SECS:-8}"
vg=iolab
lvs_all=(s0 b1 b2 b3 b4)

log() { echo "lab: $*" >&2; }

nvme_dev="$(cat /sys/block/nvme0n1/dev)"
log "kernel $(uname -r), nvme0n1 is $nvme_dev, throttle ${IOLANE_LAB_IOPS:-?} IOPS"
pvcreate -q /dev/nvme0n1 >/dev/null
vgcreate -q "$vg" /dev/nvme0n1 >/dev/null
lvcreate -q -T -L 1G --chunksize 64k --zero n "$vg/pool" >/dev/null 2>&1
for lv in "${lvs_all[@]}"; do
    lvcreate -q -T -V 32M -n "$lv" "$vg/pool" >/dev/null 2>&1
    dd if=/dev/zero of="/dev/$vg/$lv" bs=1M count=32 oflag=direct status=none
done
declare -A dm majmin
for lv in "${lvs_all[@]}"; do
    dm[$lv]="$(lsblk -dno KNAME "/dev/$vg/$lv")"
    majmin[$lv]="$(cat "/sys/block/${dm[$lv]}/dev")"
    log "$lv is ${dm[$lv]} (${majmin[$lv]})"
done

# kubelet's systemd layout: kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice
kp=/sys/fs/cgroup/kubepods.slice
bu="$kp/kubepods-burstable.slice"
be="$kp/kubepods-besteffort.slice"
mkdir -p "$bu" "$be"
echo +io >"$kp/cgroup.subtree_control"
echo +io >"$bu/cgroup.subtree_control"
echo +io >"$be/cgroup.subtree_control"
declare -A cg
cg[s0]="$bu/kubepods-burstable-pod0a0a0a0a_0000_4000_8000_000000000000.slice"
cg[s0same]="$be/kubepods-besteffort-pod0b0b0b0b_0000_4000_8000_000000000000.slice"
for i in 1 2 3 4; do
    cg[b$i]="$be/kubepods-besteffort-pod0c0c0c0${i}_0000_4000_8000_000000000000.slice"
done
for k in "${!cg[@]}"; do mkdir -p "${cg[$k]}"; done

cpu_idle() { awk '/^cpu /{print $5+$6, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }

# fio_job NAME LV CGROUP RUNTIME [DELAY [RAMP]]: one fio in its own cgroup, in the
# background. RAMP seconds at the start count in no figure (fio's ramp_time): five fio
# processes starting under software emulation take about a second to reach steady state.
fio_job() {
    local name="$1" lv="$2" cgroup="$3" runtime="$4" delay="${5:-0}" ramp="${6:-0}"
    (
        sleep "$delay"
        echo "$BASHPID" >"$cgroup/cgroup.procs"
        exec fio --name="$name" --filename="/dev/$vg/$lv" --rw=randread --bs=4k \
            --ioengine=libaio --direct=1 --iodepth=8 --time_based --runtime="$runtime" --ramp_time="$ramp" \
            --randrepeat=0 --norandommap --write_iops_log="$out/$name" --log_avg_msec=100 \
            --log_unix_epoch=1 --output-format=json --output="$out/$name.json" >/dev/null
    ) &
    pids+=($!)
}

# phase NAME WHO...: WHO is s0, s0same or b1..b4; everyone runs $secs seconds together.
phase() {
    local name="$1" w lv
    shift
    local before after
    pids=()
    before="$(cpu_idle)"
    for w in "$@"; do
        lv="${w%same}"
        fio_job "$name.$w" "$lv" "${cg[$w]}" "$secs" 0 1
    done
    wait "${pids[@]}"
    after="$(cpu_idle)"
    echo "$name $before $after" >>"$out/cpu.txt"
    log "phase $name done"
}

set_max() { # set_max WHO VALUE
    local lv="${1%same}"
    echo "${majmin[$lv]} riops=$2 wiops=$2" >"${cg[$1]}/io.max"
}

rm -f "$out"/*.log "$out"/*.json "$out/cpu.txt" "$out/summary.txt"

# (a) baselines
phase solo s0
phase batchalone b1 b2 b3 b4
cap="$(/usr/bin/python3 - "$out" <<'EOF'
import json, sys
d = sys.argv[1]
solo = json.load(open(f"{d}/solo.s0.json"))["jobs"][0]["read"]["iops"]
batch = sum(json.load(open(f"{d}/batchalone.b{i}.json"))["jobs"][0]["read"]["iops"] for i in range(1, 5))
print(round(max(solo, batch)))
EOF
)"
log "device capacity (max of solo and batch alone): $cap IOPS"
echo "$cap" >"$out/capacity.txt"

# (b) static caps: the literal built-in default, then the device-proportional cap that
# would leave streaming 90 % (batch class = 10 % of the device, 2.5 % per volume).
phase nocap s0 b1 b2 b3 b4
for i in 1 2 3 4; do set_max "b$i" 2000; done
phase static2000 s0 b1 b2 b3 b4
prop=$((cap / 40))
[ "$prop" -ge 2 ] || prop=2
for i in 1 2 3 4; do set_max "b$i" "$prop"; done
echo "$prop" >"$out/static-prop.txt"
phase staticprop s0 b1 b2 b3 b4
phase staticprop-batchalone b1 b2 b3 b4
for i in 1 2 3 4; do set_max "b$i" max; done

# (c) iocost on the NVMe (the device dm-thin submits to), a linear model at PCT % of the
# measured capacity (IOLANE_LAB_IOCOST_PCTS, default "95 75": the lower, the more iocost
# rather than the device queue arbitrates), fixed vrate. Pod weights: streaming 1000,
# batch 25 each.
echo "default 1000" >"${cg[s0]}/io.weight"
echo "default 1000" >"${cg[s0same]}/io.weight"
for i in 1 2 3 4; do echo "default 25" >"${cg[b$i]}/io.weight"; done
for pct in ${IOLANE_LAB_IOCOST_PCTS:-95 75}; do
    model=$((cap * pct / 100))
    echo "$nvme_dev enable=1 ctrl=user rpct=0 rlat=0 wpct=0 wlat=0 min=100.00 max=100.00" >/sys/fs/cgroup/io.cost.qos
    echo "$nvme_dev ctrl=user model=linear rbps=1000000000 rseqiops=$model rrandiops=$model wbps=1000000000 wseqiops=$model wrandiops=$model" >/sys/fs/cgroup/io.cost.model
    cat /sys/fs/cgroup/io.cost.qos /sys/fs/cgroup/io.cost.model >"$out/iocost$pct-config.txt"
    phase "iocost$pct-cross" s0 b1 b2 b3 b4
    phase "iocost$pct-same" s0same b1 b2 b3 b4
    phase "iocost$pct-batchalone" b1 b2 b3 b4
    # What it takes across slices: weight the QoS slices themselves (kubelet-owned).
    echo "default 900" >"$bu/io.weight"
    echo "default 100" >"$be/io.weight"
    phase "iocost$pct-slices" s0 b1 b2 b3 b4
    echo "default 100" >"$bu/io.weight"
    echo "default 100" >"$be/io.weight"
    echo "$nvme_dev enable=0" >/sys/fs/cgroup/io.cost.qos
done

# (d) the adaptive io.max loop on each LV's own dm device: iops_controller::priority's law,
# driven by the priority_lab example (host-built, copied here).
cp "${IOLANE_LAB_BIN:?}" /tmp/priority_lab
loop_args=(--capacity "$cap" --device nvme0n1 --streaming "${dm[s0]}" --log "$out/loop.log"
    --stop /tmp/lab.stop)
for i in 1 2 3 4; do loop_args+=(--batch "${cg[b$i]}:${dm[b$i]}"); done
rm -f /tmp/lab.stop
/tmp/priority_lab "${loop_args[@]}" &
loop_pid=$!
sleep 1
phase adaptive s0 b1 b2 b3 b4
phase adaptive-batchalone b1 b2 b3 b4
# Reaction: batch saturates, streaming runs from +4 s for 5 s, batch goes on 5 s more.
before="$(cpu_idle)"
pids=()
for i in 1 2 3 4; do fio_job "react.b$i" "b$i" "${cg[b$i]}" 14; done
fio_job react.s0 s0 "${cg[s0]}" 5 4
wait "${pids[@]}"
echo "react $before $(cpu_idle)" >>"$out/cpu.txt"
touch /tmp/lab.stop
wait "$loop_pid" || log "the adaptive loop failed"
log "adaptive loop stopped"
# The device again, to see whether its capacity drifted during the run (host load).
phase solo-end s0

/usr/bin/python3 "$here/priority-report.py" "$out" | tee "$out/summary.txt"
