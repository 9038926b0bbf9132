# lib.sh -- shared helpers for bench/run.sh (sourced, not run).
#
# Adapted from the peer-baseline harness (Kamailio/rtpengine measurements): same PID-safe
# process tracking, CPU accounting, rate ladder and sipp runner, plus softswitch start-up,
# a per-ladder time budget and TCP port checks.
#
# Gives every script:
#   SCRATCH            a private scratch dir under /tmp (removed on exit unless KEEP_SCRATCH=1)
#   log MSG            timestamped message on stderr
#   die MSG            log + exit 1 (cleanup still runs)
#   track_pid PID      remember a process we started; cleanup stops it (by PID only,
#                      checking its start time so a recycled PID is never hit)
#   track_tree PID     track PID and all its current descendants (e.g. kamailio children)
#   stop_tracked PID.. stop some tracked processes now
#   on_exit CMD        register an extra cleanup command (run in reverse order)
#   cpu_ticks PID..    sum of utime+stime (clock ticks) of the given processes
#   sys_cpu / busy_pct machine-wide busy CPU from /proc/uptime (see note there)
#   CLK_TCK            ticks per second
#   budget_allows S    true while S more seconds fit in BUDGET_S (default 280)
#   ladder FN RATES REFINE COST   step-up rate search with bisection (sets LADDER_BEST)
#   start_kamailio / run_sipp / sipp_cpu_pct   Kamailio and sipp helpers
#   udp_bound / udp_rcvbuf_errors / sock_drops UDP port and drop counters
#   calc / fcmp        float arithmetic / comparison through awk
#
# Nothing here ever signals a process by name.

set -u
set -o pipefail

BASE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT_NAME="$(basename "$0" .sh)"
SCRATCH="$(mktemp -d "/tmp/bench-softswitch-${SCRIPT_NAME}.XXXXXX")"
CLK_TCK="$(getconf CLK_TCK)"
NPROC="$(nproc)"

declare -a _TRACKED_PIDS=()
declare -A _TRACKED_START=()
declare -a _EXIT_HOOKS=()
_CLEANED=0

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# /proc/PID/stat fields after the "(comm) " part, as an array: f[0] is field 3 (state),
# so field N is f[N-3]: ppid=f[1], utime=f[11], stime=f[12], starttime=f[19]
_stat_fields() { # PID -> sets global array _F
    local s
    { s="$(<"/proc/$1/stat")"; } 2>/dev/null || return 1
    s="${s##*) }"
    read -ra _F <<<"$s"
}

pid_start() { _stat_fields "$1" || return 1; echo "${_F[19]}"; }

pid_alive_same() { # PID -> true if it still is the process we tracked
    local pid="$1" st
    [[ -d /proc/$pid ]] || return 1
    st="$(pid_start "$pid")" || return 1
    [[ "${_TRACKED_START[$pid]:-}" == "$st" ]]
}

track_pid() {
    local pid="$1" st
    st="$(pid_start "$pid")" || return 0
    _TRACKED_PIDS+=("$pid")
    _TRACKED_START[$pid]="$st"
}

children_of() { # direct children of PID (from /proc, no name matching)
    local p
    for p in /proc/[0-9]*; do
        p="${p#/proc/}"
        _stat_fields "$p" || continue
        [[ "${_F[1]}" == "$1" ]] && echo "$p"
    done
    return 0
}

descendants() { # all descendants of PID (recursive)
    local pid="$1" c
    for c in $(children_of "$pid"); do
        echo "$c"
        descendants "$c"
    done
}

track_tree() {
    local pid="$1" c
    track_pid "$pid"
    for c in $(descendants "$pid"); do track_pid "$c"; done
}

on_exit() { _EXIT_HOOKS+=("$*"); }

_stop_pids() { # stop the given (tracked) PIDs: TERM, wait up to 5 s, then KILL
    local pid i alive
    for pid in "$@"; do
        pid_alive_same "$pid" && kill -TERM "$pid" 2>/dev/null
    done
    for i in $(seq 50); do
        alive=0
        for pid in "$@"; do
            if pid_alive_same "$pid"; then
                # reap zombies of our own children
                _stat_fields "$pid" && [[ "${_F[0]}" == Z ]] && continue
                alive=1
            fi
        done
        (( alive )) || break
        sleep 0.1
    done
    for pid in "$@"; do
        if pid_alive_same "$pid" && ! { _stat_fields "$pid" && [[ "${_F[0]}" == Z ]]; }; then
            log "pid $pid did not stop on TERM within 5 s, sending KILL"
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    for pid in "$@"; do wait "$pid" 2>/dev/null; done
    return 0
}

stop_tracked() { _stop_pids "$@"; }

cleanup() {
    (( _CLEANED )) && return 0
    _CLEANED=1
    local i
    # newest tracked process first
    local -a rev=()
    for (( i=${#_TRACKED_PIDS[@]}-1; i>=0; i-- )); do rev+=("${_TRACKED_PIDS[$i]}"); done
    (( ${#rev[@]} )) && _stop_pids "${rev[@]}"
    for (( i=${#_EXIT_HOOKS[@]}-1; i>=0; i-- )); do
        eval "${_EXIT_HOOKS[$i]}" >/dev/null 2>&1 || true
    done
    if [[ "${KEEP_SCRATCH:-0}" == 1 ]]; then
        log "scratch kept in $SCRATCH"
    else
        rm -rf "$SCRATCH"
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

cpu_ticks() { # PID... -> utime+stime summed (ticks); vanished PIDs count 0
    local pid total=0
    for pid in "$@"; do
        _stat_fields "$pid" || continue
        total=$(( total + _F[11] + _F[12] ))
    done
    echo "$total"
}

sys_cpu() { # -> "uptime_s idle_s" from /proc/uptime (idle summed over all CPUs).
    # Busy time is derived as NPROC*d(uptime) - d(idle): on this VM the tick-sampled
    # user/system counters of /proc/stat badly under-count short bursty work (seen:
    # 0.8 s reported vs 6.2 s of per-process CPU), while idle time is exact (nohz).
    cat /proc/uptime
}
busy_pct() { # "UP0 IDLE0" "UP1 IDLE1" -> machine busy in % of ONE core (max NPROC*100)
    local u0 i0 u1 i1
    read -r u0 i0 <<<"$1"; read -r u1 i1 <<<"$2"
    awk -v u0="$u0" -v i0="$i0" -v u1="$u1" -v i1="$i1" -v n="$NPROC" \
        'BEGIN { d = u1 - u0; if (d <= 0) { print 0; exit } printf "%.0f", (n * d - (i1 - i0)) / d * 100 }'
}

need() { command -v "$1" >/dev/null 2>&1 || die "missing command: $1"; }

raise_nofile() { ulimit -n "$(ulimit -Hn)" 2>/dev/null || true; }

# ---------------------------------------------------------------------------
# time budget: every script must finish well under 5 minutes
SCRIPT_T0="$(date +%s)"
BUDGET_S="${BUDGET_S:-280}"
elapsed_s() { echo $(( $(date +%s) - SCRIPT_T0 )); }
budget_allows() { # SECONDS -> true if that much more still fits in the budget
    (( $(elapsed_s) + $1 <= BUDGET_S ))
}
budget_reset() { SCRIPT_T0="$(date +%s)"; }   # each ladder gets its own BUDGET_S

# ---------------------------------------------------------------------------
# rate ladder: ladder STEP_FN "R1 R2 ..." REFINE STEP_COST_S
#   runs STEP_FN R for each rate (ascending) until the first failure, then
#   bisects REFINE times between the last pass and the first failure.
#   STEP_FN returns 0 = pass, non-zero = fail.  Sets LADDER_BEST, LADDER_FAIL,
#   LADDER_NOTE.
LADDER_BEST=0; LADDER_FAIL=0; LADDER_NOTE=""
ladder() {
    local fn="$1" rates="$2" refine="$3" cost="$4" r lo=0 hi=0 mid i
    for r in $rates; do
        if ! budget_allows "$cost"; then
            LADDER_NOTE="time budget reached before rate $r"; log "$LADDER_NOTE"; break
        fi
        if "$fn" "$r"; then lo="$r"; else hi="$r"; break; fi
    done
    if (( hi > 0 )); then
        for (( i = 0; i < refine; i++ )); do
            mid=$(( (lo + hi) / 2 ))
            # round to a "nice" step: 2 significant digits
            local mag=1
            while (( mid / mag >= 100 )); do mag=$(( mag * 10 )); done
            mid=$(( mid / mag * mag ))
            (( mid > lo && mid < hi )) || break
            if ! budget_allows "$cost"; then
                LADDER_NOTE="time budget reached before refinement step $mid"; log "$LADDER_NOTE"; break
            fi
            if "$fn" "$mid"; then lo="$mid"; else hi="$mid"; fi
        done
    else
        [[ -z "$LADDER_NOTE" ]] && LADDER_NOTE="no failure up to the highest rate tried"
    fi
    LADDER_BEST="$lo"; LADDER_FAIL="$hi"
}

# ---------------------------------------------------------------------------
# UDP helpers
udp_bound() { # IP PORT -> true when some socket is bound to IP:PORT (from /proc/net/udp)
    local a b c d
    IFS=. read -r a b c d <<<"$1"
    local hex
    hex="$(printf '%02X%02X%02X%02X:%04X' "$d" "$c" "$b" "$a" "$2")"
    awk -v h="$hex" 'NR > 1 && $2 == h {f = 1} END {exit !f}' /proc/net/udp
}

tcp_listening() { # IP PORT -> true when some TCP socket listens on IP:PORT or 0.0.0.0:PORT
    local a b c d hex any
    IFS=. read -r a b c d <<<"$1"
    hex="$(printf '%02X%02X%02X%02X:%04X' "$d" "$c" "$b" "$a" "$2")"
    any="$(printf '00000000:%04X' "$2")"
    awk -v h="$hex" -v z="$any" 'NR > 1 && ($2 == h || $2 == z) && $4 == "0A" {f = 1} END {exit !f}' /proc/net/tcp
}
udp_taken() { # PORT -> true when 127.0.0.1:PORT or 0.0.0.0:PORT is bound (UDP)
    udp_bound 127.0.0.1 "$1" || udp_bound 0.0.0.0 "$1"
}

# ---------------------------------------------------------------------------
# softswitch: start_softswitch BIN CFG PORT LOG -> sets SS_PID; waits (bounded) until it
# answers OPTIONS with 200 on 127.0.0.1:PORT.
start_softswitch() { # returns non-zero (after logging why) when the node does not come up
    local bin="$1" cfg="$2" port="$3" logf="$4" i
    [[ -x "$bin" ]] || die "softswitch binary not found: $bin (make build, or set SOFTSWITCH_BIN)"
    udp_taken "$port" && die "127.0.0.1:$port (udp) is already in use"
    tcp_listening 127.0.0.1 "$port" && die "127.0.0.1:$port (tcp) is already in use"
    "$bin" --config "$cfg" >"$logf" 2>&1 </dev/null &
    SS_PID=$!
    track_pid "$SS_PID"
    for i in $(seq "${SS_START_TIMEOUT_S:-60}"); do
        if ! kill -0 "$SS_PID" 2>/dev/null; then
            tail -20 "$logf" >&2; log "softswitch exited at startup"; return 1
        fi
        python3 "$BASE_DIR/tools/sip_ping.py" 127.0.0.1 "$port" 1 && break
        sleep 0.5
    done
    if ! python3 "$BASE_DIR/tools/sip_ping.py" 127.0.0.1 "$port" 2; then
        tail -20 "$logf" >&2; log "softswitch did not answer OPTIONS on 127.0.0.1:$port"
        stop_tracked "$SS_PID"; return 1
    fi
    log "softswitch pid $SS_PID up on 127.0.0.1:$port"
}

# ---------------------------------------------------------------------------
# Kamailio: start_kamailio CFG CHILDREN PORT LOG -> sets KAM_MAIN, KAM_PIDS (main + children)
# Shared memory: KAM_SHM_MB (2048).  Debian's default of 64 MB (and even 512 MB) runs out
# under a few thousand calls/s: tm keeps every finished transaction for wt_timer (5 s).
start_kamailio() {
    local cfg="$1" children="$2" port="$3" logf="$4" i
    need kamailio
    udp_bound 127.0.0.1 "$port" && die "127.0.0.1:$port is already in use"
    kamailio -c -f "$cfg" -A "CHILDREN=$children" >"$logf.check" 2>&1 \
        || { cat "$logf.check" >&2; die "kamailio config check failed"; }
    kamailio -f "$cfg" -A "CHILDREN=$children" -DD -E -w "$SCRATCH" \
        -m "${KAM_SHM_MB:-2048}" -M "${KAM_PKG_MB:-16}" >"$logf" 2>&1 </dev/null &
    KAM_MAIN=$!
    track_pid "$KAM_MAIN"
    for i in $(seq 100); do
        udp_bound 127.0.0.1 "$port" && break
        kill -0 "$KAM_MAIN" 2>/dev/null || { tail -20 "$logf" >&2; die "kamailio exited at startup"; }
        sleep 0.1
    done
    udp_bound 127.0.0.1 "$port" || die "kamailio did not bind 127.0.0.1:$port"
    sleep 1   # let it fork its workers
    track_tree "$KAM_MAIN"
    KAM_PIDS=("$KAM_MAIN" $(descendants "$KAM_MAIN"))
    log "kamailio main pid $KAM_MAIN, ${#KAM_PIDS[@]} processes, children=$children"
}

# run_sipp TAG ARGS... : runs sipp (under /usr/bin/time) in SCRATCH, tracked for cleanup.
# Leaves $SCRATCH/TAG.{out,time,stat.csv,err.log}; returns sipp's exit code.
run_sipp() {
    local tag="$1"; shift
    # sipp's own -timeout was seen not to end a run stuck after an overload step: bound
    # every run from outside too (TERM, then KILL 5 s later).
    /usr/bin/time -f '%e %U %S' -o "$SCRATCH/$tag.time" \
        timeout -k 5 "${SIPP_HARD_TIMEOUT:-$(( DURATION + 90 ))}" \
        sipp "$@" -nostdin -trace_stat -stf "$SCRATCH/$tag.stat.csv" -fd 1 \
        -trace_err -error_file "$SCRATCH/$tag.err.log" >"$SCRATCH/$tag.out" 2>&1 </dev/null &
    local tp=$!
    track_pid "$tp"
    sleep 0.2
    track_tree "$tp"
    wait "$tp"
}

# sipp_cpu_pct TAG -> CPU used by that sipp run, in % of one core
sipp_cpu_pct() {
    # last line: /usr/bin/time puts "Command exited with non-zero status N" first on failure
    tail -n 1 "$SCRATCH/$1.time" 2>/dev/null \
        | awk '{ if ($1 > 0) printf "%.0f", ($2 + $3) / $1 * 100; else print 0 }' || echo "?"
}

# float helpers (awk): calc FORMAT EXPR ; fcmp EXPR (exit 0 when true)
calc() { awk "BEGIN { printf \"$1\", ($2) }"; }
fcmp() { awk "BEGIN { exit !($1) }"; }

# UDP drop counters: udp_rcvbuf_errors -> host-wide RcvbufErrors (/proc/net/snmp);
# sock_drops PORT -> receive-queue drops of the UDP socket(s) bound to local PORT (ss skmem d)
udp_rcvbuf_errors() {
    awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp
}
sock_drops() {
    ss -uamnH "sport = :$1" 2>/dev/null | grep -o 'd[0-9]*)' | tr -dc '0-9\n' | awk '{s += $1} END {print s + 0}'
}

# wait_http_ok HOST:PORT PATH TIMEOUT_S -> true once GET http://HOST:PORT/PATH answers 200
wait_http_ok() {
    python3 - "$1" "$2" "$3" <<'PY'
import sys, time, urllib.request
addr, path, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen("http://%s%s" % (addr, path), timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.2)
sys.exit(1)
PY
}
