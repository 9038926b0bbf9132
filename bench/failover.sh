#!/usr/bin/env bash
# bench/failover.sh -- `make bench`: how fast the virtual IP answers again after its holder
# dies, with phones registered to it and calls through it, side by side with keepalived
# (VRRP, Debian's 2.2.7, default timers) moving an address between the same namespaces.
#
# Topology (root; every address lives in network namespaces this script creates and deletes):
#   <p>-br  a bridge br0 and the bridge ends of four veth pairs
#   <p>-n1  node 1, eth0 10.99.0.1/24   \
#   <p>-n2  node 2, eth0 10.99.0.2/24    } softswitch cluster members (Raft :7000, admin :8060)
#   <p>-n3  node 3, eth0 10.99.0.3/24   /  keepalived runs on n1 (priority 150) and n2 (100)
#   <p>-cl  client, eth0 10.99.0.10/24: phones, SIPp, probes
# The softswitch VIP is 10.99.0.100/24 ([vip] on eth0; SIP 0.0.0.0:5060 and the media
# relay bind to it: only the holder, the Raft leader with a valid lease, answers);
# keepalived's is 10.99.0.200/24.
#
# A crash is SIGKILL of the holder's process(es) and, at the same instant, its eth0 down
# (a kill -9 alone leaves the address configured on the dead node, which would go on
# answering ARP). Restore: the stale address removed, link up, the process restarted on
# its data dir (a softswitch node rejoins as a follower), wait until healthy.
#
# keepalived part (first, short): per trial, crash the MASTER (n1) at a phase of the 1 s
# advert cycle that moves by 1/TRIALS s from trial to trial; measured: crash -> first ICMP
# echo reply to a request sent after the crash (one request every PROBE_MS from the client).
#
# softswitch part, per trial:
#   - vip_phones (bench binary, client ns): 2 x CALLS phones register to the VIP with digest
#     auth, CALLS calls between them with the media anchored on the relay, PCMU RTP at 50
#     pps each way;
#   - a registration load: SIPp (register-log.xml: REGISTER, 401, REGISTER with MD5 digest,
#     200) at REG_RATE/s for REG_S s around the crash, new users each trial;
#   - vip_probe (client ns): one SIP OPTIONS to VIP:5060 every PROBE_MS;
#   - crash of the holder (the leader `switchctl cluster status` names); measured: crash ->
#     first 200 to an OPTIONS sent after the crash (failover_ms); per call and direction
#     the audio gap (longest time without RTP from 0.5 s before the crash until the hang-up)
#     and whether audio resumed; then every call hangs up (BYE must be answered 200) and
#     each caller calls its callee again (the callee's registration must still route);
#     registrations lost = users whose REGISTER got a 200 (SIPp log, and the phones) but
#     whose binding is missing from the new leader's replicated store
#     (`switchctl registrations list`);
#     term = Raft term before -> after (more than +1: elections that failed);
#     healthy_for_s = time from the last restore (cluster seen healthy) to the crash;
#   - restore, and wait until three voters, a leader, the VIP on the leader only and
#     OPTIONS answered.
#
# Output: per-trial lines, then
#   keepalived failover median_ms=N max_ms=M
#   softswitch vip failover median_ms=N max_ms=M regs_lost=R calls_kept=K/T audio_gap_median_ms=G audio_gap_max_ms=H
#   ratio keepalived/softswitch median=X
#   goal ... PASS|FAIL  (median <= 500 ms, max <= 1000 ms, 0 registrations lost, >= 99 % calls keep audio)
#
# Env knobs: TRIALS (10, both systems), KA_TRIALS / SS_TRIALS (default TRIALS), CALLS (20),
#   REG_RATE (100 REGISTER/s), REG_S (8), PROBE_MS (10), AFTER_S (4: calls run on after the
#   crash), SETTLE_S (0: extra wait between the restore and the next softswitch trial; 12
#   lets every member notice the restarted one first, see README), SYSTEMS ("keepalived softswitch"), SOFTSWITCH_BIN, SWITCHCTL_BIN, BENCH_BIN
#   (dir of vip_probe/vip_phones), NS_PREFIX (vipb<PID>), BUDGET_S (900), KEEP_SCRATCH=1,
#   QUICK=1 (3 trials, 6 calls). Needs root, ip, keepalived, sipp, python3.

source "$(dirname "$0")/lib.sh"

if [[ "${QUICK:-0}" == 1 ]]; then
    TRIALS="${TRIALS:-3}"
    CALLS="${CALLS:-6}"
fi
TRIALS="${TRIALS:-10}"
KA_TRIALS="${KA_TRIALS:-$TRIALS}"
SS_TRIALS="${SS_TRIALS:-$TRIALS}"
CALLS="${CALLS:-20}"
REG_RATE="${REG_RATE:-100}"
REG_S="${REG_S:-8}"
PROBE_MS="${PROBE_MS:-10}"
AFTER_S="${AFTER_S:-4}"
SETTLE_S="${SETTLE_S:-0}"
SYSTEMS="${SYSTEMS:-keepalived softswitch}"
BUDGET_S="${BUDGET_S:-900}"
P="${NS_PREFIX:-vipb$$}"

REPO_DIR="$(cd "$BASE_DIR/.." && pwd)"
SOFTSWITCH_BIN="${SOFTSWITCH_BIN:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/softswitch}"
SWITCHCTL_BIN="${SWITCHCTL_BIN:-$(dirname "$SOFTSWITCH_BIN")/switchctl}"
BENCH_BIN="${BENCH_BIN:-$(dirname "$SOFTSWITCH_BIN")}"
PROBE="$BENCH_BIN/vip_probe"
PHONES="$BENCH_BIN/vip_phones"

NS_BR="$P-br"; NS_CL="$P-cl"
NODE_NS=("$P-n1" "$P-n2" "$P-n3")
NODE_IP=(10.99.0.1 10.99.0.2 10.99.0.3)
CL_IP=10.99.0.10
VIP=10.99.0.100
KA_VIP=10.99.0.200
PREFIX_LEN=24
SIP_PORT=5060
REG_USER0=100000        # SIPp users REG_USER0.., password pw<user>
REG_POOL=20000
PHONE_EXT0=2000         # vip_phones extensions, password pw<ext>
SIPP_PORT=5090

(( $(id -u) == 0 )) || die "needs root (network namespaces)"
need ip; need python3; need awk
[[ " $SYSTEMS " == *" keepalived "* ]] && need keepalived
if [[ " $SYSTEMS " == *" softswitch "* ]]; then
    need sipp
    for b in "$SOFTSWITCH_BIN" "$SWITCHCTL_BIN" "$PROBE" "$PHONES"; do
        [[ -x "$b" ]] || die "missing $b (make build; cargo build --release -p bench)"
    done
elif [[ " $SYSTEMS " == *" keepalived "* ]]; then
    [[ -x "$PROBE" ]] || die "missing $PROBE (cargo build --release -p bench)"
fi
(( CALLS >= 1 && CALLS <= 200 )) || die "CALLS: 1..200"
(( REG_RATE * REG_S * SS_TRIALS <= REG_POOL )) || die "REG_RATE x REG_S x SS_TRIALS > $REG_POOL users"
raise_nofile

# --- namespaces ------------------------------------------------------------------------
ALL_NS=("$NS_BR" "${NODE_NS[@]}" "$NS_CL")
for ns in "${ALL_NS[@]}"; do
    [[ -e "/run/netns/$ns" ]] && die "namespace $ns already exists"
done
for ns in "${ALL_NS[@]}"; do
    on_exit "ip netns del '$ns'"
    ip netns add "$ns" || die "cannot create namespace $ns"
    ip -n "$ns" link set lo up
done
ip -n "$NS_BR" link add br0 type bridge stp_state 0 || die "cannot create the bridge"
ip -n "$NS_BR" link set br0 up
i=0
for ns in "${NODE_NS[@]}" "$NS_CL"; do
    i=$(( i + 1 ))
    ip -n "$ns" link add eth0 type veth peer name "p$i" netns "$NS_BR" || die "cannot create a veth for $ns"
    ip -n "$NS_BR" link set "p$i" master br0 up
    ip -n "$ns" link set eth0 up
done
for i in 0 1 2; do ip -n "${NODE_NS[$i]}" addr add "${NODE_IP[$i]}/$PREFIX_LEN" dev eth0; done
ip -n "$NS_CL" addr add "$CL_IP/$PREFIX_LEN" dev eth0
log "namespaces ${ALL_NS[*]} up (bridge 10.99.0.0/$PREFIX_LEN)"

mac_of() { ip -n "$1" link show eth0 | awk '/link\/ether/{print $2}'; }
has_addr() { [[ "$(ip -n "$1" -4 addr show dev eth0)" == *" $2/"* ]]; }
client_mac_for() { # IP -> the MAC the client's neighbour table holds for it
    ip -n "$NS_CL" neigh show "$1" | awk '{for (i = 1; i <= NF; i++) if ($i == "lladdr") print $(i + 1)}'
}
declare -A MAC_NODE=()
for i in 0 1 2; do MAC_NODE[$(mac_of "${NODE_NS[$i]}")]="n$(( i + 1 ))"; done
who_answers() { local m; m="$(client_mac_for "$1")"; [[ -n "$m" ]] && echo "${MAC_NODE[$m]:-?}" || echo "?"; }
link_up() { [[ "$(ip -n "$1" link show eth0)" == *"state UP"* ]]; }

median_max() { # numbers on stdin -> "MEDIAN MAX" (integers)
    sort -n | awk '{a[NR] = $1} END { if (!NR) { print "- -"; exit }
        m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.0f %.0f\n", m, a[NR] }'
}

RES="$SCRATCH/results.txt"
: >"$RES"

# ======================================================================================
# keepalived
# ======================================================================================
KA_MED="-"; KA_MAX="-"; KA_DONE=0
declare -A KA_PARENT=()
ka_conf() { # NAME PRIORITY
    cat >"$SCRATCH/ka-$1.conf" <<EOF
global_defs {
    router_id $1
}
vrrp_instance VI_BENCH {
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority $2
    advert_int 1
    virtual_ipaddress {
        $KA_VIP/$PREFIX_LEN dev eth0
    }
}
EOF
}
ka_start() { # NAME NS
    local name="$1" ns="$2" j
    rm -f "$SCRATCH/ka-$name".{pid,vrrp.pid,chk.pid}
    ip netns exec "$ns" keepalived -n -l -D -G -P -f "$SCRATCH/ka-$name.conf" \
        -p "$SCRATCH/ka-$name.pid" -r "$SCRATCH/ka-$name.vrrp.pid" -c "$SCRATCH/ka-$name.chk.pid" \
        >>"$SCRATCH/ka-$name.log" 2>&1 </dev/null &
    KA_PARENT[$name]=$!
    track_pid "$!"
    disown "$!"   # SIGKILLed on purpose: no job-status noise
    for j in $(seq 50); do [[ -s "$SCRATCH/ka-$name.vrrp.pid" ]] && break; sleep 0.1; done
    [[ -s "$SCRATCH/ka-$name.vrrp.pid" ]] || { tail "$SCRATCH/ka-$name.log" >&2; return 1; }
    track_pid "$(cat "$SCRATCH/ka-$name.vrrp.pid")"
}
ka_wait_master() { # r1 (n1) holds the address, r2 not, and the client gets echo replies
    local j
    for j in $(seq 100); do
        if has_addr "${NODE_NS[0]}" "$KA_VIP" && ! has_addr "${NODE_NS[1]}" "$KA_VIP"; then
            ip netns exec "$NS_CL" "$PROBE" --mode icmp --target "$KA_VIP" --local "$CL_IP" \
                --interval-ms 20 --until-ready --max-s 1 >/dev/null 2>&1 && return 0
        fi
        sleep 0.1
    done
    return 1
}

run_keepalived() {
    local t probe ppid t_kill parent child out ms gap who
    log "keepalived $(keepalived -v 2>&1 | awk 'NR==1{print $2}'): r1 on n1 (priority 150), r2 on n2 (100), address $KA_VIP"
    ka_conf r1 150; ka_conf r2 100
    ka_start r1 "${NODE_NS[0]}" || { log "keepalived r1 did not start"; return 1; }
    ka_start r2 "${NODE_NS[1]}" || { log "keepalived r2 did not start"; return 1; }
    ka_wait_master || { log "keepalived r1 never became MASTER"; return 1; }
    local -a times=()
    for t in $(seq "$KA_TRIALS"); do
        budget_allows 20 || { log "keepalived: time budget reached before trial $t"; break; }
        # the crash lands (t-1)/TRIALS s later in the advert cycle each trial
        sleep "$(calc %.3f "1.2 + ($t - 1) / $KA_TRIALS")"
        rm -f "$SCRATCH/ka.killed"
        probe="$SCRATCH/ka-probe.$t"
        ip netns exec "$NS_CL" "$PROBE" --mode icmp --target "$KA_VIP" --local "$CL_IP" \
            --interval-ms "$PROBE_MS" --trigger "$SCRATCH/ka.killed" --max-s 15 >"$probe" 2>&1 &
        ppid=$!; track_pid "$ppid"
        for j in $(seq 50); do grep -q '^ready' "$probe" && break; sleep 0.05; done
        grep -q '^ready' "$probe" || { log "keepalived: no echo replies before trial $t"; stop_tracked "$ppid"; return 1; }
        parent="${KA_PARENT[r1]}"; child="$(cat "$SCRATCH/ka-r1.vrrp.pid")"
        t_kill="$(date +%s.%N)"
        kill -STOP "$parent"; kill -KILL "$child" "$parent"
        ip -n "${NODE_NS[0]}" link set eth0 down
        echo "$t_kill" >"$SCRATCH/ka.killed"
        wait "$ppid"
        out="$(grep '^failover_ms=' "$probe")"
        ms="$(sed -n 's/^failover_ms=\([0-9]*\).*/\1/p' <<<"$out")"
        gap="$(sed -n 's/.* gap_ms=\([0-9]*\).*/\1/p' <<<"$out")"
        who="$(who_answers "$KA_VIP")"
        [[ "$who" == n2 ]] && who=r2
        [[ "$who" == n1 ]] && who="r1(!)"
        if [[ -n "$ms" ]]; then times+=("$ms"); else ms=timeout; gap=-; fi
        printf 'keepalived trial %-3s failover_ms=%-7s gap_ms=%-7s holder_after=%s\n' "$t" "$ms" "${gap:--}" "$who" | tee -a "$RES" >&2
        # restore r1: drop the address the killed keepalived left, link up, restart; it preempts back
        ip -n "${NODE_NS[0]}" addr del "$KA_VIP/$PREFIX_LEN" dev eth0 2>/dev/null
        ip -n "${NODE_NS[0]}" link set eth0 up
        if (( t < KA_TRIALS )); then
            ka_start r1 "${NODE_NS[0]}" || { log "keepalived r1 did not restart"; break; }
            ka_wait_master || { log "keepalived r1 did not take the address back after trial $t"; break; }
        fi
    done
    # stop what is left of keepalived before the softswitch part; drop its address
    local name
    for name in r1 r2; do
        stop_tracked "${KA_PARENT[$name]}" "$(cat "$SCRATCH/ka-$name.vrrp.pid" 2>/dev/null || echo "${KA_PARENT[$name]}")"
    done
    for i in 0 1; do ip -n "${NODE_NS[$i]}" addr del "$KA_VIP/$PREFIX_LEN" dev eth0 2>/dev/null; done
    KA_DONE=${#times[@]}
    (( KA_DONE )) || return 1
    read -r KA_MED KA_MAX < <(printf '%s\n' "${times[@]}" | median_max)
}

# ======================================================================================
# softswitch
# ======================================================================================
SS_MED="-"; SS_MAX="-"; SS_DONE=0
declare -a NODE_PID=(0 0 0)
NODE_DIR=("$SCRATCH/n1" "$SCRATCH/n2" "$SCRATCH/n3")

write_seed() { # FILE
    {
        echo "extensions:"
        seq "$REG_USER0" $(( REG_USER0 + REG_POOL - 1 )) \
            | awk '{printf "  - number: \"%s\"\n    name: \"Load %s\"\n    password: \"pw%s\"\n", $1, $1, $1}'
        seq "$PHONE_EXT0" $(( PHONE_EXT0 + 2 * CALLS - 1 )) \
            | awk '{printf "  - number: \"%s\"\n    name: \"Phone %s\"\n    password: \"pw%s\"\n", $1, $1, $1}'
    } >"$1"
}

write_node_config() { # INDEX BOOTSTRAP(true|false) [SEED]
    local i="$1" dir="${NODE_DIR[$1]}" ip="${NODE_IP[$1]}"
    mkdir -p "$dir"
    cat >"$dir/node.toml" <<EOF
[node]
data_dir = "$dir/data"

[sip]
udp = ["0.0.0.0:$SIP_PORT"]
tcp = []
advertised_host = "$VIP"

[registrar]
realm = "softswitch"
min_expires = 60
max_expires = 7200
default_expires = 3600
max_contacts = 2
nonce_ttl_secs = 30
algorithms = ["MD5"]

[calls]
ring_timeout_secs = 30

[media]
enabled = true
listen = "0.0.0.0"
port_min = 30000
port_max = 40000

[admin]
listen = "$ip:8060"

[cluster]
raft_listen = "$ip:7000"
bootstrap = $2

[log]
level = "warn,node::cluster::vip=info"
EOF
    printf '\n[vip]\naddress = "%s"\ninterface = "eth0"\nannounce_count = 5\nannounce_interval_ms = 200\n' \
        "$VIP/$PREFIX_LEN" >>"$dir/node.toml"
    [[ -n "${3:-}" ]] && printf '\n[pbx]\nseed = "%s"\n' "$3" >>"$dir/node.toml"
    return 0
}

ctl() { # switchctl from the client namespace, bounded
    timeout -k 2 10 ip netns exec "$NS_CL" "$SWITCHCTL_BIN" "$@"
}

ns_http_ok() { # NS URL TIMEOUT_S -> true once GET URL answers 200 from inside NS
    ip netns exec "$1" python3 - "$2" "$3" <<'PY'
import sys, time, urllib.request
url, limit = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.2)
sys.exit(1)
PY
}

start_node() { # INDEX
    local i="$1" ns="${NODE_NS[$1]}"
    # `ip netns exec` execs the command: the PID is the node's own
    ip netns exec "$ns" "$SOFTSWITCH_BIN" --config "${NODE_DIR[$i]}/node.toml" \
        >>"$SCRATCH/n$(( i + 1 )).log" 2>&1 </dev/null &
    NODE_PID[$i]=$!
    track_pid "${NODE_PID[$i]}"
    disown "${NODE_PID[$i]}"   # SIGKILLed on purpose: no job-status noise
    ns_http_ok "$NS_CL" "http://${NODE_IP[$i]}:8060/readyz" 60 \
        || { tail -20 "$SCRATCH/n$(( i + 1 )).log" >&2; log "node n$(( i + 1 )) not ready (GET /readyz)"; return 1; }
}

# cluster_state -> "LEADER_INDEX TERM VOTERS" from the first node that answers (-1 if none)
cluster_state() {
    local i st
    for i in 0 1 2; do
        link_up "${NODE_NS[$i]}" || continue
        st="$(ctl --admin "${NODE_IP[$i]}:8060" --output json cluster status 2>/dev/null | python3 -c '
import json, sys
v = json.load(sys.stdin)
ld = (v.get("leader") or {}).get("admin_addr", "")
voters = sum(1 for m in v.get("members", []) if m.get("role") == "voter")
print(ld.split(":")[0] or "-", v.get("term", 0), voters)' 2>/dev/null)" && [[ -n "$st" ]] && break
        st=""
    done
    local lip term voters idx=-1
    read -r lip term voters <<<"${st:-- 0 0}"
    for i in 0 1 2; do [[ "$lip" == "${NODE_IP[$i]}" ]] && idx=$i; done
    echo "$idx ${term:-0} ${voters:-0}"
}

vip_answers() { # true when OPTIONS to the VIP get 200s from the client namespace
    ip netns exec "$NS_CL" "$PROBE" --mode sip --target "$VIP:$SIP_PORT" --local "$CL_IP" \
        --interval-ms 20 --until-ready --max-s "${1:-1}" >/dev/null 2>&1
}

# wait_healthy TIMEOUT_S -> sets LEADER (index), TERM and HEALTHY_AT (epoch s); true once
# three voters, a leader that holds the VIP (and no one else does) and OPTIONS to the VIP
# answered
LEADER=-1; TERM=0; HEALTHY_AT=0
wait_healthy() {
    local deadline=$(( $(date +%s) + $1 )) st lead term voters i others
    while (( $(date +%s) < deadline )); do
        read -r lead term voters <<<"$(cluster_state)"
        if (( lead >= 0 && voters == 3 )) && has_addr "${NODE_NS[$lead]}" "$VIP"; then
            others=0
            for i in 0 1 2; do (( i != lead )) && has_addr "${NODE_NS[$i]}" "$VIP" && others=1; done
            if (( ! others )) && vip_answers 1; then
                LEADER=$lead; TERM=$term; HEALTHY_AT="$(date +%s.%N)"; return 0
            fi
        fi
        sleep 0.3
    done
    return 1
}

form_cluster() {
    local i token out
    write_seed "$SCRATCH/pbx.yaml"
    write_node_config 0 true "$SCRATCH/pbx.yaml"
    out="$("$SOFTSWITCH_BIN" --check --config "${NODE_DIR[0]}/node.toml" 2>&1)" \
        || die "the node refuses the config ($out): does this softswitch support [vip]?"
    start_node 0 || return 1
    # The admin API wants a bearer token: the one the first member wrote (every member
    # accepts it, tokens are replicated); `ip netns exec` passes the environment on.
    SWITCHCTL_TOKEN="$(cat "${NODE_DIR[0]}/data/admin-token")" \
        || { log "n1 wrote no admin token"; return 1; }
    export SWITCHCTL_TOKEN
    for i in 1 2; do
        write_node_config "$i" false
        token="$(ctl --admin "${NODE_IP[0]}:8060" cluster token 2>>"$SCRATCH/cluster.log")" \
            || { log "no join token from n1 (cluster.log)"; return 1; }
        out="$(timeout -k 2 120 ip netns exec "${NODE_NS[$i]}" "$SWITCHCTL_BIN" cluster join "$token" \
            --data-dir "${NODE_DIR[$i]}/data" --raft-addr "${NODE_IP[$i]}:7000" \
            --admin-addr "${NODE_IP[$i]}:8060" --node-config "${NODE_DIR[$i]}/node.toml" 2>>"$SCRATCH/cluster.log")" \
            || { log "n$(( i + 1 )) could not join (cluster.log)"; return 1; }
        log "join: ${out%%$'\n'*}"
        start_node "$i" || return 1
    done
    wait_healthy 60 || { log "the cluster is not healthy (3 voters, leader holding the VIP, OPTIONS answered)"; return 1; }
    log "cluster up: leader n$(( LEADER + 1 )), VIP $VIP answered"
}

# registered AORs (user parts) in the replicated store of node INDEX
store_users() {
    timeout -k 2 60 "$SWITCHCTL_BIN" registrations list --data-dir "${NODE_DIR[$1]}/data" 2>>"$SCRATCH/regs.log" \
        | python3 -c '
import json, re, sys
for line in sys.stdin:
    try:
        aor = json.loads(line).get("aor", "")
    except ValueError:
        continue
    m = re.match(r"^(?:sips?:)?([^@;]+)@", aor)
    print(m.group(1) if m else aor)' | sort -u
}

declare -a SS_TIMES=() CALL_GAPS=()
REGS_LOST=0; REGS_ACKED=0; REGS_FAILED=0; CALLS_KEPT=0; CALLS_TOTAL=0; CALLS_LOST=0; POST_OK=0; POST_TOTAL=0

ss_trial() { # T
    local t="$1" dir="$SCRATCH/trial$1" victim pid t_kill out ms gap who new term voters since
    mkdir -p "$dir"
    victim=$LEADER
    # phones and calls
    ip netns exec "$NS_CL" "$PHONES" --server "$VIP:$SIP_PORT" --local "$CL_IP" --calls "$CALLS" \
        --first-ext "$PHONE_EXT0" --control "$dir" --after-s "$AFTER_S" --max-wait-s 60 --max-s 150 \
        >"$dir/phones.out" 2>"$dir/phones.err" &
    local phones_pid=$!; track_pid "$phones_pid"
    local j
    for j in $(seq 400); do [[ -e "$dir/ready" ]] && break; kill -0 "$phones_pid" 2>/dev/null || break; sleep 0.1; done
    [[ -e "$dir/ready" ]] || { cat "$dir/phones.err" >&2; log "trial $t: phones not ready"; stop_tracked "$phones_pid"; return 1; }
    log "trial $t: phones $(cat "$dir/ready")"
    # registration load: new users each trial, REG_S s, the crash about in the middle
    local first=$(( REG_USER0 + (t - 1) * REG_RATE * REG_S )) m=$(( REG_RATE * REG_S ))
    { echo SEQUENTIAL; seq "$first" $(( first + m - 1 )) | awk '{print $1 ";pw" $1}'; } >"$dir/users.csv"
    timeout -k 5 $(( REG_S + 60 )) ip netns exec "$NS_CL" sipp -sf "$BASE_DIR/sipp/register-log.xml" \
        -inf "$dir/users.csv" "$VIP:$SIP_PORT" -i "$CL_IP" -p "$SIPP_PORT" -r "$REG_RATE" -m "$m" \
        -recv_timeout 10000 -timeout "$(( REG_S + 40 ))s" -nostdin -trace_logs -log_file "$dir/sipp.log" \
        -trace_stat -stf "$dir/sipp.stat.csv" -fd 1 >"$dir/sipp.out" 2>&1 </dev/null &
    local sipp_pid=$!; track_pid "$sipp_pid"
    # the probe
    ip netns exec "$NS_CL" "$PROBE" --mode sip --target "$VIP:$SIP_PORT" --local "$CL_IP" \
        --interval-ms "$PROBE_MS" --trigger "$dir/killed" --max-s $(( REG_S + 20 )) >"$dir/probe.out" 2>&1 &
    local probe_pid=$!; track_pid "$probe_pid"
    for j in $(seq 100); do grep -q '^ready' "$dir/probe.out" && break; sleep 0.05; done
    grep -q '^ready' "$dir/probe.out" || log "trial $t: the VIP did not answer OPTIONS before the crash"
    # crash about REG_S/2 into the registration load, at a phase that moves from trial to trial
    sleep "$(calc %.3f "$REG_S / 2 - 0.5 + ($t - 1) / $SS_TRIALS * 0.3")"
    pid="${NODE_PID[$victim]}"
    pid_alive_same "$pid" || { log "trial $t: leader n$(( victim + 1 )) (pid $pid) is not running"; return 1; }
    t_kill="$(date +%s.%N)"
    since="$(calc %.1f "$t_kill - $HEALTHY_AT")"
    kill -KILL "$pid"
    ip -n "${NODE_NS[$victim]}" link set eth0 down
    echo "$t_kill" >"$dir/killed.tmp" && mv "$dir/killed.tmp" "$dir/killed"
    wait "$probe_pid" 2>/dev/null
    out="$(grep '^failover_ms=' "$dir/probe.out")"
    ms="$(sed -n 's/^failover_ms=\([0-9]*\).*/\1/p' <<<"$out")"
    gap="$(sed -n 's/.* gap_ms=\([0-9]*\).*/\1/p' <<<"$out")"
    who="$(who_answers "$VIP")"
    [[ -n "$ms" ]] && SS_TIMES+=("$ms")
    # the calls run on, hang up, call again; the registration load ends
    for j in $(seq 1200); do kill -0 "$phones_pid" 2>/dev/null || break; sleep 0.1; done
    stop_tracked "$phones_pid"
    for j in $(seq 900); do kill -0 "$sipp_pid" 2>/dev/null || break; sleep 0.1; done
    stop_tracked "$sipp_pid"
    # who leads now (from a survivor)
    read -r new term voters <<<"$(cluster_state)"
    # registrations: acknowledged (SIPp log + registered phones) vs the new leader's store
    local store_node=$new
    (( store_node < 0 )) && store_node=$(( (victim + 1) % 3 ))
    { grep -ho 'registered [0-9]*' "$dir/sipp.log" 2>/dev/null | awk '{print $2}'
      grep -o '^registered [0-9]*' "$dir/phones.out" | awk '{print $2}'
    } | sort -u >"$dir/acked.txt"
    store_users "$store_node" >"$dir/store.txt"
    local acked lost failed_regs
    acked="$(wc -l <"$dir/acked.txt")"
    lost="$(comm -23 "$dir/acked.txt" "$dir/store.txt" | wc -l)"
    local ok_regs
    ok_regs="$(grep -c 'registered [0-9]*' "$dir/sipp.log" 2>/dev/null)"
    failed_regs=$(( m - ${ok_regs:-0} ))
    (( lost > 0 )) && log "trial $t: lost registrations: $(comm -23 "$dir/acked.txt" "$dir/store.txt" | head -5 | tr '\n' ' ')..."
    REGS_LOST=$(( REGS_LOST + lost )); REGS_ACKED=$(( REGS_ACKED + acked )); REGS_FAILED=$(( REGS_FAILED + failed_regs ))
    # calls
    local sum est kept clost post gmed gmax
    sum="$(grep '^summary' "$dir/phones.out")"
    est="$(sed -n 's/.* established=\([0-9]*\).*/\1/p' <<<"$sum")"
    kept="$(sed -n 's/.* kept=\([0-9]*\).*/\1/p' <<<"$sum")"
    clost="$(sed -n 's/.* lost=\([0-9]*\).*/\1/p' <<<"$sum")"
    post="$(sed -n 's/.* post_ok=\([0-9]*\/[0-9]*\).*/\1/p' <<<"$sum")"
    gmed="$(sed -n 's/.* gap_median_ms=\([0-9]*\).*/\1/p' <<<"$sum")"
    gmax="$(sed -n 's/.* gap_max_ms=\([0-9]*\).*/\1/p' <<<"$sum")"
    # calls that never got established count as not kept (the load was meant to be up)
    CALLS_TOTAL=$(( CALLS_TOTAL + CALLS )); CALLS_KEPT=$(( CALLS_KEPT + ${kept:-0} )); CALLS_LOST=$(( CALLS_LOST + ${clost:-0} ))
    POST_OK=$(( POST_OK + ${post%%/*} )); POST_TOTAL=$(( POST_TOTAL + ${post##*/} ))
    while read -r g; do CALL_GAPS+=("$g"); done < <(grep '^call .* established=1' "$dir/phones.out" \
        | sed -n 's/.* gap_ab_ms=\([0-9]*\) gap_ba_ms=\([0-9]*\).*/\1 \2/p' | awk '{print ($1 > $2) ? $1 : $2}')
    printf 'softswitch trial %-3s killed=n%s failover_ms=%-7s gap_ms=%-7s vip_at=%s leader_after=%s term=%s->%s healthy_for_s=%s regs_acked=%s regs_lost=%s reg_failed=%s calls=%s/%s kept=%s lost=%s post_calls_ok=%s audio_gap_median_ms=%s audio_gap_max_ms=%s\n' \
        "$t" $(( victim + 1 )) "${ms:-timeout}" "${gap:--}" "$who" "$( (( new >= 0 )) && echo "n$(( new + 1 ))" || echo none)" \
        "$TERM" "${term:-?}" "$since" \
        "$acked" "$lost" "$failed_regs" "${est:-0}" "$CALLS" "${kept:-0}" "${clost:-?}" "${post:-?}" "${gmed:--}" "${gmax:--}" \
        | tee -a "$RES" >&2
    grep -v '^call .* kept=1' "$dir/phones.out" | grep -E '^(call|post_call)' | head -5 | sed 's/^/    /' >&2
    # restore: the stale VIP off the dead node, link up, restart on its data dir
    ip -n "${NODE_NS[$victim]}" addr del "$VIP/$PREFIX_LEN" dev eth0 2>/dev/null
    ip -n "${NODE_NS[$victim]}" link set eth0 up
    start_node "$victim" || return 1
    wait_healthy 60 || { log "trial $t: the cluster did not recover (3 voters, leader holding the VIP)"; return 1; }
}

run_softswitch() {
    form_cluster || return 1
    local t
    for t in $(seq "$SS_TRIALS"); do
        budget_allows $(( REG_S + AFTER_S + SETTLE_S + 40 )) || { log "softswitch: time budget reached before trial $t"; break; }
        (( t > 1 && SETTLE_S > 0 )) && sleep "$SETTLE_S"
        ss_trial "$t" || { log "softswitch: trial $t failed, stopping"; break; }
        SS_DONE=$t
    done
    (( ${#SS_TIMES[@]} )) || return 1
    read -r SS_MED SS_MAX < <(printf '%s\n' "${SS_TIMES[@]}" | median_max)
}

[[ " $SYSTEMS " == *" keepalived "* ]] && { run_keepalived || log "keepalived: no result"; }
[[ " $SYSTEMS " == *" softswitch "* ]] && { run_softswitch || log "softswitch: no result"; }

# ======================================================================================
echo "# VIP failover after a crash of the holder (kill -9 + its link down), probe every ${PROBE_MS} ms from a client namespace; $NPROC cores"
[[ " $SYSTEMS " == *" keepalived "* ]] \
    && echo "# keepalived $(keepalived -v 2>&1 | awk 'NR==1{print $2}'): VRRP advert_int 1, priorities 150/100, preempt; failover_ms = crash -> first ICMP echo reply to a request sent after it"
if [[ " $SYSTEMS " == *" softswitch "* ]]; then
    echo "# softswitch: 3 nodes (the node's Raft defaults: heartbeat 30 ms, election 100-200 ms), [vip] announce 5 x 200 ms; failover_ms = crash -> first 200 to an OPTIONS sent after it;"
    echo "#   load: $CALLS calls with RTP both ways (50 pps) through the relay on the VIP, SIPp REGISTER with digest at ${REG_RATE}/s (new users each trial);"
    (( SETTLE_S > 0 )) && echo "#   SETTLE_S=$SETTLE_S: each trial starts that long after the previous restore"
    echo "#   audio gap = longest time without RTP in a direction, from 0.5 s before the crash to the hang-up ${AFTER_S} s after it; kept = audio resumed both ways"
fi
echo "# gap_ms = last answer before the crash -> first after"
cat "$RES"
if [[ " $SYSTEMS " == *" keepalived "* ]]; then
    echo "keepalived failover median_ms=${KA_MED} max_ms=${KA_MAX} trials=${KA_DONE}/${KA_TRIALS}"
fi
if [[ " $SYSTEMS " == *" softswitch "* ]]; then
    read -r AG_MED AG_MAX < <(printf '%s\n' "${CALL_GAPS[@]}" | grep . | median_max)
    echo "softswitch vip failover median_ms=${SS_MED} max_ms=${SS_MAX} regs_lost=${REGS_LOST} calls_kept=${CALLS_KEPT}/${CALLS_TOTAL} audio_gap_median_ms=${AG_MED} audio_gap_max_ms=${AG_MAX} trials=${SS_DONE}/${SS_TRIALS} regs_acked=${REGS_ACKED} reg_failed_during=${REGS_FAILED} calls_lost=${CALLS_LOST} post_calls_ok=${POST_OK}/${POST_TOTAL}"
fi
if [[ "$KA_MED" != - && "$SS_MED" != - ]] && (( SS_MED > 0 )); then
    echo "ratio keepalived/softswitch median=$(calc %.2f "$KA_MED / $SS_MED")"
fi
if [[ " $SYSTEMS " == *" softswitch "* ]]; then
    pf() { if (( SS_DONE > 0 )) && eval "$1"; then echo PASS; else echo FAIL; fi; }
    echo "goal softswitch median_ms<=500: $(pf '[[ $SS_MED != - ]] && (( SS_MED <= 500 ))')"
    echo "goal softswitch max_ms<=1000: $(pf '[[ $SS_MAX != - ]] && (( SS_MAX <= 1000 && ${#SS_TIMES[@]} == SS_DONE ))')"
    echo "goal softswitch regs_lost=0: $(pf '(( REGS_LOST == 0 && REGS_ACKED > 0 ))')"
    echo "goal softswitch calls_kept>=99%: $(pf '(( CALLS_TOTAL > 0 && CALLS_KEPT * 100 >= CALLS_TOTAL * 99 ))')"
fi
exit 0
