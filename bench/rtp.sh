#!/usr/bin/env bash
# bench/rtp.sh -- `make bench`, media relay part: our `udp` relay backend side by side with
# rtpengine (Debian rtpengine-daemon, user-space forwarding: --table=-1), same machine, same
# run, same load generator and pass rule.
#
# Load: N relay sessions, each a G.711 call relayed both ways: 172-byte UDP payload (12-byte
# RTP header + 160 bytes PCMU), 50 packets/s per direction, i.e. N x 100 packets/s offered.
# Callers on 127.0.0.2, callees on 127.0.0.3 (port BASE_PORT + 2 * (i % PER_SIDE)), relays on
# 127.0.0.1: ours on the first half of PORT_MIN..PORT_MAX, rtpengine on the second half.
# Both relays start first and hold all their sessions for the whole run; then the levels
# alternate between them (ours at N, rtpengine at N, ours at the next N, ...) so that both
# see the same background load on this shared machine.
#   softswitch: bench binary relay_host = media::udp::Relay (default config: 1 forwarding
#               thread "media-fwd-0", epoll + recvmmsg/sendmmsg, per-session sockets) with a
#               wide port range; the N sessions are created through its public API with both
#               peers known (PeerMedia from "SDP"), as the B2BUA does after the answer.
#   rtpengine:  rtpengine 10.5 --table=-1 (default threads), sessions created over its ng
#               control protocol (bench binary ng_client: offer + answer per call).
# Driver: bench binary rtp_blast (paced RTP, sendmmsg/recvmmsg + epoll, every returned
# packet checked: length, RTP header, payload bytes, stream and arrival socket).
#
# Per level: WARMUP_S warm-up, MEASURE_S window: packets sent and relayed intact in the
# window, CPU of the relay process (utime+stime of ALL its threads from /proc/PID/stat: the
# same accounting for both systems; for ours the forwarding threads alone are shown too),
# relayed pps / relay CPU in cores = pps per core. A level is ok when |sent - relayed| <
# LOSS_OK % of sent and no packet came back damaged; the ladder stops after two saturated
# levels in a row (not ok, or the blaster short of the offered load).
# PIN=1 (default): the relay on CPU 0, the blaster on CPU 1 (taskset), so the relay has
# exactly one core; both at nice NICE (-5) so that background builds disturb less.
#
# Figures:
#   pps per core   = at the ok level with the most packets relayed (at saturation, with
#                    PIN=1, the relay is at ~100 % of its core: its one-core capacity)
#   CPU per 1 000 calls = the relay's CPU (% of one core) at the 1000-session level
#                    (100 000 packets/s relayed; scaled to it, and noted, when the blaster
#                    fell short of that rate)
# Last lines:
#   relay_pps_per_core softswitch=N rtpengine=M ratio=R goal>=3 met=yes|NO
#   relay_cpu_per_1000_calls softswitch=X% rtpengine=Y% ratio=R   (ratio = ours / theirs: lower is better)
#
# Env knobs: LEVELS ("100 500 1000 1500 2000 2500 3000 3500 4000 4500" sessions), WARMUP_S (2),
#   MEASURE_S (6), LOSS_OK (2, %), PIN (1), NICE (-5), SYSTEMS ("softswitch rtpengine"),
#   PER_SIDE (1: all sessions share one caller and one callee socket, so the blaster can
#   batch its sends; 0 = every session its own two sockets, as real phones), BASE_PORT
#   (20000), PORT_MIN (24000), PORT_MAX (63999), NG_PORT (22232), RELAY_THREADS (1),
#   RTPENGINE_ARGS (extra daemon options), BUDGET_S (240, whole script), BENCH_BIN (dir of
#   relay_host/rtp_blast/ng_client: $CARGO_TARGET_DIR/release), KEEP_SCRATCH=1,
#   QUICK=1 (smoke run: levels 100 300, 1 s + 2 s),
#   KERNEL=1: our relay with the in-kernel fast path (RelayConfig::kernel_forwarding:
#   media/bpf/relay_tc.c, compiled here with clang, attached to lo's TC ingress; each
#   session's first packets latch in user space, then its RTP goes through the kernel),
#   ACCOUNT=cpu0: the relay's CPU is CPU 0's whole busy time (window minus its exact idle
#   and its nice > 0 time from /proc/stat, see rtp_blast), with all of lo's
#   receive processing steered to CPU 0 by RPS (rx-0/rps_cpus = 1, restored on exit). The
#   fast path forwards in the softirq of whoever sends, so the relay process's own CPU
#   would be ~0 and meaningless; with RPS, receive + relay + loopback delivery of both
#   systems land on CPU 0 (the relay's core), the blaster's sends on CPU 1. sirq% shows
#   each CPU's (tick-sampled) softirq time as a hint of that. Needs PIN=1 and 2+ cores; anything else running
#   on CPU 0 counts too (both systems alike, levels alternate).
# Refuses to start if the ng port or the blaster's endpoint ports are taken. Stops only the
# processes it started (by PID, start time checked), on any exit.

source "$(dirname "$0")/lib.sh"

if [[ "${QUICK:-0}" == 1 ]]; then
    LEVELS="${LEVELS:-100 300}"
    WARMUP_S="${WARMUP_S:-1}"
    MEASURE_S="${MEASURE_S:-2}"
fi
LEVELS="${LEVELS:-100 500 1000 1500 2000 2500 3000 3500 4000 4500}"
WARMUP_S="${WARMUP_S:-2}"
MEASURE_S="${MEASURE_S:-6}"
LOSS_OK="${LOSS_OK:-2}"
PIN="${PIN:-1}"
NICE="${NICE:--5}"
SYSTEMS="${SYSTEMS:-softswitch rtpengine}"
PER_SIDE="${PER_SIDE:-1}"
BASE_PORT="${BASE_PORT:-20000}"
PORT_MIN="${PORT_MIN:-24000}"
PORT_MAX="${PORT_MAX:-63999}"
NG_PORT="${NG_PORT:-22232}"
RELAY_THREADS="${RELAY_THREADS:-1}"
KERNEL="${KERNEL:-0}"
ACCOUNT="${ACCOUNT:-process}"
BUDGET_S="${BUDGET_S:-240}"
REPO_DIR="$(cd "$BASE_DIR/.." && pwd)"
BENCH_BIN="${BENCH_BIN:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/release}"
A_IP=127.0.0.2
B_IP=127.0.0.3
GOAL=3

if [[ "$PIN" == 1 && "$NPROC" -ge 2 ]]; then
    RELAY_PIN=(taskset -c 0); BLAST_PIN=(taskset -c 1)
    PIN_DESC="relay pinned to CPU 0, blaster to CPU 1"
else
    RELAY_PIN=(); BLAST_PIN=(); PIN_DESC="not pinned"
fi
NICE_CMD=(); [[ "$NICE" != 0 ]] && NICE_CMD=(nice -n "$NICE")

for b in relay_host rtp_blast ng_client; do
    [[ -x "$BENCH_BIN/$b" ]] || die "$BENCH_BIN/$b not found (cargo build --release -p bench, or set BENCH_BIN)"
done
[[ " $SYSTEMS " == *" rtpengine "* ]] && need rtpengine
ACCT_ARGS=()
if [[ "$ACCOUNT" == cpu0 ]]; then
    [[ "$PIN" == 1 && "$NPROC" -ge 2 ]] || die "ACCOUNT=cpu0 needs PIN=1 and 2+ cores"
    RPS_FILE=/sys/class/net/lo/queues/rx-0/rps_cpus
    RPS_OLD="$(<"$RPS_FILE")" || die "cannot read $RPS_FILE"
    echo 1 >"$RPS_FILE" || die "cannot steer lo's receive processing to CPU 0 (root?)"
    on_exit "echo $RPS_OLD >$RPS_FILE"
    ACCT_ARGS=(--account-cpu 0)
    log "ACCOUNT=cpu0: lo receive processing steered to CPU 0 (rps_cpus $RPS_OLD -> 1)"
elif [[ "$ACCOUNT" != process ]]; then
    die "ACCOUNT is process or cpu0"
fi
KERNEL_ARGS=()
if [[ "$KERNEL" == 1 ]]; then
    need clang; need tc
    clang -O2 -g -target bpf -I "/usr/include/$(uname -m)-linux-gnu" \
        -c "$REPO_DIR/media/bpf/relay_tc.c" -o "$SCRATCH/relay_tc.o" || die "compiling the BPF program"
    KERNEL_ARGS=(--kernel "$SCRATCH/relay_tc.o" --dev lo)
    # relay_host is stopped by a signal: remove its filter (our pref only), the clsact
    # qdisc if it was not there before, and the pinned map
    tc qdisc show dev lo | grep -q clsact && HAD_CLSACT=1 || HAD_CLSACT=0
    on_exit "tc filter del dev lo ingress pref 4917 2>/dev/null; (( HAD_CLSACT )) || tc qdisc del dev lo clsact 2>/dev/null; rm -f /sys/fs/bpf/tc/globals/relay_streams"
fi
need taskset; need awk
# 4 sockets per session on the relay side: raise the hard limit too where allowed
ulimit -Hn 65536 2>/dev/null || true
raise_nofile

MAXS=0; for n in $LEVELS; do (( n > MAXS )) && MAXS=$n; done
(( MAXS * 4 + 200 < $(ulimit -n) )) || die "need more file descriptors for $MAXS sessions (ulimit -n $(ulimit -n))"
(( PER_SIDE > 0 )) || PER_SIDE=$MAXS
(( PER_SIDE > MAXS )) && PER_SIDE=$MAXS

udp_taken "$NG_PORT" && die "127.0.0.1:$NG_PORT (udp, ng) is already in use"
# the blaster's endpoints: one awk pass over /proc/net/udp for both address ranges
endpoints_taken() {
    awk -v lo="$BASE_PORT" -v hi="$(( BASE_PORT + 2 * PER_SIDE ))" '
        function hex(h,   i, v) { v = 0; for (i = 1; i <= length(h); i++) v = v * 16 + index("0123456789ABCDEF", substr(h, i, 1)) - 1; return v }
        NR > 1 { split($2, a, ":"); ip = a[1]; port = hex(a[2])
                 if ((ip == "0200007F" || ip == "0300007F" || ip == "00000000") && port >= lo && port <= hi) { print $2; f = 1; exit } }
        END { exit !f }' /proc/net/udp
}
taken="$(endpoints_taken)" && die "a blaster endpoint port ($BASE_PORT..$(( BASE_PORT + 2 * PER_SIDE ))) is already in use ($taken)"

RES="$SCRATCH/levels.txt"
: >"$RES"
declare -A PID=() FILE=() PREFIX=() LIMITED=() BEST_PPC=() BEST_LVL=() BEST_RELAYED=() CPU1000=() NOTE=() NOTE1000=()

# run_level SYSTEM N: one level against one relay; counts saturated levels in LIMITED[SYSTEM]
run_level() {
    local sys="$1" n="$2" pid="${PID[$1]}" out s0 s1 ok note short=0 kv
    local -a extra=()
    [[ -n "${PREFIX[$sys]:-}" ]] && extra=(--threads-prefix "${PREFIX[$sys]}")
    log "$sys: $n sessions = $(( n * 100 )) pps offered"
    s0="$(sys_cpu)"
    out="$("${NICE_CMD[@]}" "${BLAST_PIN[@]}" "$BENCH_BIN/rtp_blast" --sessions "${FILE[$sys]}" --n "$n" \
        --warmup "$WARMUP_S" --measure "$MEASURE_S" --relay-pid "$pid" "${extra[@]}" "${ACCT_ARGS[@]}")" \
        || die "rtp_blast failed"
    s1="$(sys_cpu)"
    pid_alive_same "$pid" || die "$sys relay died (logs in $SCRATCH)"
    echo "$sys $out" >>"$SCRATCH/rtp_blast.raw"
    local -A R=()
    for kv in $out; do R[${kv%%=*}]="${kv#*=}"; done
    ok=yes; note=""
    if fcmp "${R[send_pps]} < 0.98 * ${R[offered_pps]}"; then
        short=1; note="blaster short of the offered load (skipped ${R[skipped_slots]} slots)"
    fi
    if fcmp "${R[loss_pct]} >= $LOSS_OK"; then ok=no; note="${note:+$note; }loss >= $LOSS_OK%"; fi
    if fcmp "${R[loss_pct]} <= -$LOSS_OK"; then ok=no; note="${note:+$note; }backlog: relayed > sent"; fi
    if (( R[bad] > 0 )); then ok=no; note="${note:+$note; }${R[bad]} damaged/misrouted"; fi
    printf '%-10s %8s %8s %8s %8s %7s %6s %6s %6s %9s %5s %5s %9s %4s %s\n' "$sys" "$n" "${R[offered_pps]}" \
        "${R[send_pps]}" "${R[recv_pps]}" "${R[loss_pct]}" "${R[relay_cpu_pct]}" \
        "$([[ -n "${PREFIX[$sys]:-}" ]] && echo "${R[relay_threads_cpu_pct]}" || echo -)" "${R[blaster_cpu_pct]}" \
        "${R[pps_per_core]}" "${R[pkts_per_recvmmsg]}" "$(busy_pct "$s0" "$s1")" "${R[softirq_pct]}" "$ok" "$note" | tee -a "$RES" >&2
    # CPU per 1 000 calls: the relay's CPU at this level, scaled to 100 000 pps when the
    # blaster fell short of it (then noted with the rate it was taken at)
    if (( n == 1000 )) && fcmp "${R[recv_pps]} > 0"; then
        CPU1000[$sys]="$(calc %.1f "${R[relay_cpu_pct]} * 100000 / ${R[recv_pps]}")"
        fcmp "${R[recv_pps]} < 98000" && NOTE1000[$sys]="CPU per 1 000 calls scaled from ${R[relay_cpu_pct]}% at ${R[recv_pps]} pps relayed (blaster short)"
    fi
    if [[ $ok == yes ]] && fcmp "${R[recv_pps]} > ${BEST_RELAYED[$sys]:-0}"; then
        BEST_PPC[$sys]="${R[pps_per_core]}"; BEST_LVL[$sys]="$n"; BEST_RELAYED[$sys]="${R[recv_pps]}"
    fi
    if [[ $ok == no ]] || (( short )); then
        LIMITED[$sys]=$(( ${LIMITED[$sys]:-0} + 1 ))
    else
        LIMITED[$sys]=0
    fi
}

wait_file() { # FILE PID SECONDS -> true once FILE exists
    local i
    for (( i = 0; i < $3 * 10; i++ )); do
        [[ -s "$1" ]] && return 0
        pid_alive_same "$2" || return 1
        sleep 0.1
    done
    return 1
}

# Both relays hold all their sessions for the whole run, each in its half of the port range,
# and the levels alternate between them, so that both see the same background load.
HALF=$(( (PORT_MAX - PORT_MIN + 1) / 2 ))
(( HALF / 4 >= MAXS )) || die "PORT_MIN..PORT_MAX ($PORT_MIN..$PORT_MAX) holds fewer than 2 x 2 x $MAXS port pairs"
range_of() { # INDEX -> "min max" of that system's half
    echo "$(( PORT_MIN + $1 * HALF )) $(( PORT_MIN + ($1 + 1) * HALF - 1 ))"
}

start_softswitch() { # PORT_LO PORT_HI
    local f="$SCRATCH/softswitch.sessions" pid
    "${NICE_CMD[@]}" "${RELAY_PIN[@]}" "$BENCH_BIN/relay_host" --sessions "$MAXS" --out "$f" \
        --bind 127.0.0.1 --port-min "$1" --port-max "$2" --threads "$RELAY_THREADS" \
        --a-ip "$A_IP" --b-ip "$B_IP" --base-port "$BASE_PORT" --per-side "$PER_SIDE" \
        --max-s "$(( BUDGET_S + 60 ))" --stats "$SCRATCH/softswitch.counters" "${KERNEL_ARGS[@]}" \
        >"$SCRATCH/relay_host.log" 2>&1 </dev/null &
    pid=$!
    track_pid "$pid"
    wait_file "$f" "$pid" 60 || { cat "$SCRATCH/relay_host.log" >&2; die "relay_host did not create its sessions"; }
    PID[softswitch]=$pid; FILE[softswitch]=$f; PREFIX[softswitch]=media-fwd-
    log "softswitch relay (relay_host pid $pid, threads: $(ls "/proc/$pid/task" | wc -l), ports $1-$2) holds $MAXS sessions"
}

start_rtpengine() { # PORT_LO PORT_HI
    local f="$SCRATCH/rtpengine.sessions" i pid
    # shellcheck disable=SC2086
    "${NICE_CMD[@]}" "${RELAY_PIN[@]}" rtpengine --config-file=none --table=-1 --interface=127.0.0.1 \
        --listen-ng="127.0.0.1:$NG_PORT" --foreground --log-stderr --log-level=4 \
        --port-min="$1" --port-max="$2" --timeout=600 --silent-timeout=600 \
        --pidfile="$SCRATCH/rtpengine.pid" ${RTPENGINE_ARGS:-} >"$SCRATCH/rtpengine.log" 2>&1 </dev/null &
    pid=$!
    track_pid "$pid"
    for i in $(seq 50); do
        "$BENCH_BIN/ng_client" --server "127.0.0.1:$NG_PORT" ping 2>/dev/null && break
        pid_alive_same "$pid" || { cat "$SCRATCH/rtpengine.log" >&2; die "rtpengine exited at startup"; }
        sleep 0.2
    done
    "$BENCH_BIN/ng_client" --server "127.0.0.1:$NG_PORT" ping || die "rtpengine does not answer ng ping"
    "$BENCH_BIN/ng_client" --server "127.0.0.1:$NG_PORT" sessions --n "$MAXS" --out "$f" \
        --a-ip "$A_IP" --b-ip "$B_IP" --base-port "$BASE_PORT" --per-side "$PER_SIDE" \
        || die "rtpengine session setup failed"
    PID[rtpengine]=$pid; FILE[rtpengine]=$f; PREFIX[rtpengine]=""
    log "rtpengine pid $pid ($(rtpengine --version 2>&1 | awk '{print $2}'), threads: $(ls "/proc/$pid/task" | wc -l), ports $1-$2) holds $MAXS sessions"
}

idx=0
for sys in $SYSTEMS; do
    case "$sys" in
        softswitch) start_softswitch $(range_of "$idx") ;;
        rtpengine) start_rtpengine $(range_of "$idx") ;;
        *) die "unknown system $sys" ;;
    esac
    idx=$(( idx + 1 ))
done

ACTIVE="$SYSTEMS"
for n in $LEVELS; do
    [[ -z "${ACTIVE// /}" ]] && break
    still=""
    for sys in $ACTIVE; do
        if ! budget_allows $(( WARMUP_S + MEASURE_S + 2 )); then
            NOTE[$sys]="time budget reached before $n sessions"; log "$sys: ${NOTE[$sys]}"; continue
        fi
        run_level "$sys" "$n"
        sleep 1   # let a backlog of this level drain before the next run
        if (( LIMITED[$sys] >= 2 )); then
            log "$sys: two saturated levels in a row; its ladder stops"
        else
            still="$still $sys"
        fi
    done
    ACTIVE="$still"
done
[[ -n "${PID[softswitch]:-}" ]] && log "softswitch relay counters: $(cat "$SCRATCH/softswitch.counters" 2>/dev/null)"
for sys in $SYSTEMS; do stop_tracked "${PID[$sys]}"; done

ratio() { # A B -> A / B, or n/a
    if fcmp "${2:-0} > 0" && fcmp "${1:-0} > 0"; then calc %.2f "$1 / $2"; else echo "n/a"; fi
}
echo "# media relay: softswitch udp backend (bench relay_host, $RELAY_THREADS forwarding thread(s)) vs rtpengine $(rtpengine --version 2>&1 | awk '{print $2}') user space (--table=-1); $NPROC cores, $PIN_DESC, nice $NICE; ${WARMUP_S}s warm-up + ${MEASURE_S}s window per level"
echo "# load: sessions x 2 directions x 50 pps of 172-byte G.711 RTP; endpoints: $( (( PER_SIDE >= MAXS )) && echo "two sockets per session" || echo "$PER_SIDE caller + $PER_SIDE callee socket(s) shared by the sessions") (relay side: 4 sockets per session for both systems)"
if [[ "$ACCOUNT" == cpu0 ]]; then
    echo "# ACCOUNT=cpu0: relay% = CPU 0's whole busy time (window - idle - nice, /proc/stat), lo's receive processing steered to CPU 0 by RPS; sirq% = tick-sampled softirq % per CPU (0,1,...)"
else
    echo "# relay% = CPU of the relay process, all threads, % of ONE core; fwd% = our media-fwd-* threads alone; blast% = the blaster; busy% = whole machine (max $(( NPROC * 100 )))"
fi
(( KERNEL )) && echo "# KERNEL=1: our relay with the in-kernel fast path (TC ingress BPF on lo, media/bpf/relay_tc.c)"
echo "# pps/core = relayed/s / relay CPU in cores; rx/call = packets per recvmmsg call of the blaster; ok = |sent - relayed| < ${LOSS_OK}% of sent, nothing damaged"
printf '%-10s %8s %8s %8s %8s %7s %6s %6s %6s %9s %5s %5s %9s %4s %s\n' \
    system sessions offered sent/s relay/s loss% relay% fwd% blast% pps/core rx/c busy% sirq% ok note
cat "$RES"
for sys in $SYSTEMS; do
    [[ -n "${NOTE[$sys]:-}" ]] && echo "# $sys: ${NOTE[$sys]}"
    (( ${BEST_LVL[$sys]:-0} > 0 )) && echo "# $sys: pps per core at ${BEST_LVL[$sys]} sessions, the ok level with the most relayed (${BEST_RELAYED[$sys]} pps)"
    [[ -n "${NOTE1000[$sys]:-}" ]] && echo "# $sys: ${NOTE1000[$sys]}"
done
ss_ppc="${BEST_PPC[softswitch]:-0}"; re_ppc="${BEST_PPC[rtpengine]:-0}"
r="$(ratio "$ss_ppc" "$re_ppc")"
met="n/a"; [[ "$r" != n/a ]] && { fcmp "$r >= $GOAL" && met=yes || met=NO; }
echo "relay_pps_per_core softswitch=$ss_ppc rtpengine=$re_ppc ratio=$r goal>=$GOAL met=$met"
pct() { [[ -n "${1:-}" ]] && echo "$1%" || echo "n/a"; }
echo "relay_cpu_per_1000_calls softswitch=$(pct "${CPU1000[softswitch]:-}") rtpengine=$(pct "${CPU1000[rtpengine]:-}") ratio=$(ratio "${CPU1000[softswitch]:-0}" "${CPU1000[rtpengine]:-0}")"
exit 0
