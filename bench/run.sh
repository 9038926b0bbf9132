#!/usr/bin/env bash
# bench/run.sh -- `make bench`: the softswitch side by side with Kamailio 5.6, same machine,
# same run, same load generator (sipp) and pass rules.
#
#  (a) register_auth: REGISTER -> 401 -> REGISTER with MD5 digest -> 200, users
#      100000..119999 (password pw<user>), one sipp UAC at -r RATE.
#        softswitch: its registrar (algorithms = ["MD5"]: sipp only does MD5)
#        kamailio:   in-memory registrar (usrloc db_mode=0, pv_auth_check)  kamailio/registrar.cfg
#  (b) calls: INVITE/100/180/200/ACK/pause CALL_MS/BYE/200 from a sipp UAC to a sipp UAS.
#        softswitch: B2BUA; the UAS registers as extension 2000 first, the UAC is extension
#                    3000 with trusted_ips = ["127.0.0.1"] (IP-authenticated: no 407 round
#                    trip, like the Kamailio proxy, which does no auth either)
#        kamailio:   stateful record-routing proxy (tm, t_relay by request-URI)  kamailio/proxy.cfg
#  (c) register3: the REGISTER ladder of (a) against a three-node softswitch cluster (formed
#      with switchctl: token + offline join, load on the leader) and the single node of (a)
#      from the same run (measured first with the same ladder if (a) is not selected).
#      Goal: three nodes >= CLUSTER_GOAL (0.70) x the single node.
#
# Rate ladder per (system, test): DURATION s per step, ascending RATES until the first failing
# step, then REFINE bisection steps. A step passes when sipp exits 0, every call succeeded
# (UAC and UAS), sipp created all calls on time (it kept up) and retransmissions were at most
# MAX_RETRANS_PCT % of the calls. The figure is the highest passing rate.
#
# Everything on 127.0.0.1: softswitch udp+tcp :5170 (admin http :5171, raft/QUIC udp :5176),
# cluster nodes 2 and 3 on :5172/:5173/:5177 and :5174/:5175/:5178, kamailio udp :5070,
# UAS :5080, UAC :5090.
# Refuses to start if one of those ports is taken. Stops only the processes it started (by PID,
# start time checked), on any exit.
#
# Env knobs: DURATION (30), RATES (both ladders), REG_RATES ("2000 4000 8000 16000 24000 32000"),
#   CALL_RATES ("250 500 1000 2000 4000 8000"), REG_REFINE (1), CALL_REFINE (2), CALL_MS (1000),
#   MAX_RETRANS_PCT (1), SIPP_BUF (4194304), CHILDREN (kamailio workers, 4), KAM_SHM_MB (2048),
#   BUDGET_S (per ladder, 330), SYSTEMS ("softswitch kamailio"), TESTS ("register calls register3"),
#   CLUSTER_GOAL (0.70), SWITCHCTL_BIN (next to SOFTSWITCH_BIN), CLUSTER_TOML ('; '-separated
#   extra [cluster] settings for every node, e.g. Raft timings; default none),
#   SETTLE_S (35: pause after a failed call step, longer than the 30 s ring timeout and tm
#   fr_inv_timer, so leftovers of that step cannot fail the next one),
#   SOFTSWITCH_BIN, KEEP_SCRATCH=1, QUICK=1 (smoke run: 5 s steps, two low rates, no bisection).
# Last lines (each when its test ran):
#   register_auth softswitch=N/s kamailio=M/s ratio=R
#   register_auth_cluster three_nodes=N/s single_node=M/s ratio=R goal>=0.70 met=yes|NO
#   calls softswitch=N cps kamailio=M cps ratio=R

source "$(dirname "$0")/lib.sh"

if [[ "${QUICK:-0}" == 1 ]]; then
    DURATION="${DURATION:-5}"
    REG_RATES="${REG_RATES:-${RATES:-200 500}}"
    CALL_RATES="${CALL_RATES:-${RATES:-50 100}}"
    REG_REFINE="${REG_REFINE:-0}"
    CALL_REFINE="${CALL_REFINE:-0}"
    CALL_MS="${CALL_MS:-500}"
    SETTLE_S="${SETTLE_S:-5}"
fi
DURATION="${DURATION:-30}"
REG_RATES="${REG_RATES:-${RATES:-2000 4000 8000 16000 24000 32000}}"
CALL_RATES="${CALL_RATES:-${RATES:-250 500 1000 2000 4000 8000}}"
REG_REFINE="${REG_REFINE:-1}"
CALL_REFINE="${CALL_REFINE:-2}"
CALL_MS="${CALL_MS:-1000}"
MAX_RETRANS_PCT="${MAX_RETRANS_PCT:-1}"
SIPP_BUF="${SIPP_BUF:-4194304}"
CHILDREN="${CHILDREN:-4}"
BUDGET_S="${BUDGET_S:-330}"
SYSTEMS="${SYSTEMS:-softswitch kamailio}"
TESTS="${TESTS:-register calls register3}"
SETTLE_S="${SETTLE_S:-35}"

SS_PORT=5170
SS_ADMIN_PORT=5171
# three-node cluster (register3): node i on SIP SS_PORTS[i], admin SS_ADMIN_PORTS[i], Raft
# (QUIC) SS_RAFT_PORTS[i]; node 1 is the single node's ports, which also listens for Raft
SS_PORTS=(5170 5172 5174)
SS_ADMIN_PORTS=(5171 5173 5175)
SS_RAFT_PORTS=(5176 5177 5178)
KAM_PORT=5070
UAS_PORT=5080
UAC_PORT=5090
CALLEE=2000
CALLER=3000

REPO_DIR="$(cd "$BASE_DIR/.." && pwd)"
SOFTSWITCH_BIN="${SOFTSWITCH_BIN:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/softswitch}"
SWITCHCTL_BIN="${SWITCHCTL_BIN:-$(dirname "$SOFTSWITCH_BIN")/switchctl}"
CLUSTER_GOAL="${CLUSTER_GOAL:-0.70}"   # register3: three nodes >= 70 % of the single node
# extra [cluster] settings for every softswitch config, ';'-separated, e.g.
# "heartbeat_ms = 100; election_timeout_min_ms = 1000; election_timeout_max_ms = 2000"
CLUSTER_TOML="${CLUSTER_TOML:-}"

need sipp; need python3; need /usr/bin/time; need awk; need ss
[[ " $SYSTEMS " == *" kamailio "* ]] && need kamailio
raise_nofile
[[ " $TESTS " == *" register3 "* && " $SYSTEMS " == *" softswitch "* && ! -x "$SWITCHCTL_BIN" ]] \
    && die "switchctl not found: $SWITCHCTL_BIN (make build, or set SWITCHCTL_BIN)"
for p in "$KAM_PORT" "$UAS_PORT" "$UAC_PORT" "${SS_PORTS[@]}" "${SS_RAFT_PORTS[@]}"; do
    udp_taken "$p" && die "127.0.0.1:$p (udp) is already in use"
done
for p in "${SS_PORTS[@]}" "${SS_ADMIN_PORTS[@]}"; do
    tcp_listening 127.0.0.1 "$p" && die "127.0.0.1:$p (tcp) is already in use"
done

# users 100000..119999, password pw<user> (the Kamailio registrar accepts the same pattern)
USERS="$SCRATCH/users.csv"
{ echo SEQUENTIAL; seq 100000 119999 | awk '{print $1 ";pw" $1}'; } >"$USERS"
CALLEE_CSV="$SCRATCH/callee.csv"
printf 'SEQUENTIAL\n%s;pw%s\n' "$CALLEE" "$CALLEE" >"$CALLEE_CSV"

STEPS="$SCRATCH/steps.txt"
: >"$STEPS"
declare -A BEST=() FAIL=() NOTE=()

# ---------------------------------------------------------------------------------------
# the system under test: SUT_NAME, SUT_PORT, SUT_PIDS (for CPU accounting)
SUT_NAME=""; SUT_PORT=0; declare -a SUT_PIDS=()

write_softswitch_pbx() { # FILE: the seed with the bench users, callee and caller
    {
        echo "extensions:"
        seq 100000 119999 | awk '{printf "  - number: \"%s\"\n    name: \"Bench %s\"\n    password: \"pw%s\"\n", $1, $1, $1}'
        printf '  - number: "%s"\n    name: "Bench callee"\n    password: "pw%s"\n' "$CALLEE" "$CALLEE"
        printf '  - number: "%s"\n    name: "Bench caller"\n    password: "pw%s"\n    trusted_ips: ["127.0.0.1"]\n' "$CALLER" "$CALLER"
    } >"$1"
}

write_softswitch_config() { # DIR SIP_PORT ADMIN_PORT RAFT_PORT BOOTSTRAP(true|false) [SEED]
    local dir="$1" sip="$2" admin="$3" raft="$4" bootstrap="$5" seed="${6:-}"
    cat >"$dir/node.toml" <<EOF
[node]
data_dir = "$dir/data"

[sip]
udp = ["127.0.0.1:$sip"]
tcp = ["127.0.0.1:$sip"]
advertised_host = "127.0.0.1"

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
# Every call's media is anchored on the relay (two RTP/RTCP pairs per call): a range
# wide enough for the calls the ladder keeps up at once.
port_min = 10000
port_max = 60000

[admin]
listen = "127.0.0.1:$admin"

[cluster]
raft_listen = "127.0.0.1:$raft"
bootstrap = $bootstrap
${CLUSTER_TOML//;/$'\n'}

[log]
level = "warn"
EOF
    [[ -n "$seed" ]] && printf '\n[pbx]\nseed = "%s"\n' "$seed" >>"$dir/node.toml"
    return 0
}

start_sut_softswitch() { # a fresh node (empty data dir) for each ladder
    local dir="$SCRATCH/softswitch"
    rm -rf "$dir/data"
    mkdir -p "$dir"
    write_softswitch_pbx "$dir/pbx.yaml"
    write_softswitch_config "$dir" "$SS_PORT" "$SS_ADMIN_PORT" "${SS_RAFT_PORTS[0]}" true "$dir/pbx.yaml"
    SUT_NAME=softswitch; SUT_PORT=$SS_PORT; SUT_PIDS=()
    start_softswitch "$SOFTSWITCH_BIN" "$dir/node.toml" "$SS_PORT" "$SCRATCH/softswitch-$1.log" || return 1
    SUT_PIDS=("$SS_PID")
}

# Three nodes on loopback formed with switchctl, as an operator does (README "Operating
# it"): node 1 bootstraps a one-node cluster with the seed; nodes 2 and 3 each get a join
# token from node 1, join offline on their empty data dir (`switchctl cluster join`
# returns once the node is a voter), then start on it with cluster.bootstrap = false.
# The SIP load goes to the leader; SUT_PIDS holds all three nodes (sut% = the cluster).
start_sut_cluster3() {
    local i dir token out leader_admin
    SUT_NAME=cluster3; SUT_PIDS=(); SUT_PORT=0
    for i in 0 1 2; do
        dir="$SCRATCH/cluster3/n$(( i + 1 ))"
        rm -rf "$dir"; mkdir -p "$dir"
        if (( i == 0 )); then
            write_softswitch_pbx "$dir/pbx.yaml"
            write_softswitch_config "$dir" "${SS_PORTS[0]}" "${SS_ADMIN_PORTS[0]}" "${SS_RAFT_PORTS[0]}" true "$dir/pbx.yaml"
        else
            write_softswitch_config "$dir" "${SS_PORTS[$i]}" "${SS_ADMIN_PORTS[$i]}" "${SS_RAFT_PORTS[$i]}" false
            token="$(timeout 30 "$SWITCHCTL_BIN" --admin "127.0.0.1:${SS_ADMIN_PORTS[0]}" cluster token 2>>"$SCRATCH/cluster3.log")" \
                || { log "cluster3: no join token from node 1 (cluster3.log)"; return 1; }
            out="$(timeout 120 "$SWITCHCTL_BIN" cluster join "$token" --data-dir "$dir/data" \
                --raft-addr "127.0.0.1:${SS_RAFT_PORTS[$i]}" --admin-addr "127.0.0.1:${SS_ADMIN_PORTS[$i]}" \
                --node-config "$dir/node.toml" 2>>"$SCRATCH/cluster3.log")" \
                || { log "cluster3: node $(( i + 1 )) could not join (cluster3.log)"; return 1; }
            log "cluster3: ${out%%$'\n'*}"
        fi
        start_softswitch "$SOFTSWITCH_BIN" "$dir/node.toml" "${SS_PORTS[$i]}" "$SCRATCH/cluster3-n$(( i + 1 )).log" || return 1
        SUT_PIDS+=("$SS_PID")
        wait_http_ok "127.0.0.1:${SS_ADMIN_PORTS[$i]}" /readyz 60 \
            || { log "cluster3: node $(( i + 1 )) not ready (GET /readyz)"; return 1; }
        if (( i == 0 )); then
            # The admin API wants a bearer token: the one node 1 wrote on its first start
            # (replicated, so every member accepts it).
            SWITCHCTL_TOKEN="$(cat "$dir/data/admin-token")" \
                || { log "cluster3: node 1 wrote no admin token"; return 1; }
            export SWITCHCTL_TOKEN
        fi
    done
    cluster3_leader || { log "cluster3: not three voters with a known leader"; return 1; }
    log "cluster3: three voters, leader node $CL_LEADER (term $CL_TERM), SIP load to 127.0.0.1:$SUT_PORT"
}

# cluster3_leader: asks the members (first that answers) for the cluster status; sets
# SUT_PORT to the leader's SIP port (the load always goes to the current leader), CL_LEADER
# and CL_TERM. Fails unless there are three voters and a leader.
CL_LEADER=0; CL_TERM=0
cluster3_write_failures() { # binding writes the nodes logged as failed (no quorum, unknown outcome)
    cat "$SCRATCH"/cluster3-n*.log 2>/dev/null | grep -c "binding write failed"
}
cluster3_leader() {
    local i st leader_admin term
    for i in 0 1 2; do
        st="$(timeout 10 "$SWITCHCTL_BIN" --admin "127.0.0.1:${SS_ADMIN_PORTS[$i]}" --output json cluster status 2>/dev/null \
            | python3 -c 'import json, sys
v = json.load(sys.stdin)
ok = len(v["members"]) == 3 and all(m["role"] == "voter" for m in v["members"]) and v.get("leader")
print(v["leader"]["admin_addr"], v["term"]) if ok else None' 2>/dev/null)" && [[ -n "$st" ]] && break
    done
    read -r leader_admin term <<<"$st"
    for i in 0 1 2; do
        if [[ "$leader_admin" == "127.0.0.1:${SS_ADMIN_PORTS[$i]}" ]]; then
            SUT_PORT="${SS_PORTS[$i]}"; CL_LEADER=$(( i + 1 )); CL_TERM="$term"; return 0
        fi
    done
    return 1
}

stop_sut() {
    (( ${#SUT_PIDS[@]} )) && stop_tracked "${SUT_PIDS[@]}"
    [[ "$SUT_NAME" == softswitch && -n "${SS_PID:-}" ]] && stop_tracked "$SS_PID"
    local i
    for i in $(seq 50); do udp_taken "$SUT_PORT" || break; sleep 0.1; done
    SUT_PIDS=()
}

start_sut_kamailio() { # CFG
    start_kamailio "$1" "$CHILDREN" "$KAM_PORT" "$SCRATCH/kamailio-$(basename "$1" .cfg).log"
    SUT_NAME=kamailio; SUT_PORT=$KAM_PORT; SUT_PIDS=("${KAM_PIDS[@]}")
}

header_reg() {
    printf '%-10s %-7s %-4s %7s %6s %6s %8s %8s %6s %7s %5s %5s %5s %s\n' \
        system rate pass ok failed retr sut_drop oth_drop gen_s got/s sut% sipp% busy% note
}
header_calls() {
    printf '%-10s %-6s %-4s %7s %6s %6s %7s %8s %8s %6s %6s %5s %5s %5s %5s %s\n' \
        system cps pass ok failed retr uas_ok uas_fail drops gen_s got/s sut% uac% uas% busy% note
}

# ---------------------------------------------------------------------------------------
reg_step() {
    local rate="$1" m=$(( $1 * DURATION )) tag="reg-$SUT_NAME-$1"
    local k0 k1 s0 s1 t0 t1 rc pass=1 note="" kd0 kd1 ud0 ud1 term0=0 leader0=0 wf0=0 wf
    if [[ "$SUT_NAME" == cluster3 ]]; then   # to the current leader; note elections
        cluster3_leader || log "cluster3: no leader known before the step"
        term0="$CL_TERM"; leader0="$CL_LEADER"; wf0="$(cluster3_write_failures)"
    fi
    log "$SUT_NAME register: $rate REGISTER/s for ${DURATION}s ($m registrations)"
    kd0="$(sock_drops "$SUT_PORT")"; ud0="$(udp_rcvbuf_errors)"
    k0="$(cpu_ticks "${SUT_PIDS[@]}")"; s0="$(sys_cpu)"; t0="$(date +%s.%N)"
    run_sipp "$tag" -sf "$BASE_DIR/sipp/register-auth.xml" -inf "$USERS" "127.0.0.1:$SUT_PORT" \
        -i 127.0.0.1 -p "$UAC_PORT" -r "$rate" -m "$m" -buff_size "$SIPP_BUF" \
        -timeout "$(( DURATION + 15 ))s" -timeout_error
    rc=$?
    k1="$(cpu_ticks "${SUT_PIDS[@]}")"; s1="$(sys_cpu)"; t1="$(date +%s.%N)"
    kd1="$(sock_drops "$SUT_PORT")"; ud1="$(udp_rcvbuf_errors)"
    local sut_drop=$(( kd1 - kd0 )) oth_drop=$(( (ud1 - ud0) - (kd1 - kd0) ))
    local st created=0 ok=0 failed=0 retrans=0 dead=0 outofcall=0 watchdog=0 gen_s=-1 elapsed_s=0 rate_got=0
    st="$(python3 "$BASE_DIR/tools/sippstat.py" "$SCRATCH/$tag.stat.csv" "$m" 2>/dev/null)"
    eval "${st//rate=/rate_got=}"
    local wall sut_pct sipp_pct busy
    wall="$(calc %.3f "$t1 - $t0")"
    sut_pct="$(calc %.0f "($k1 - $k0) / $CLK_TCK / $wall * 100")"
    busy="$(busy_pct "$s0" "$s1")"
    sipp_pct="$(sipp_cpu_pct "$tag")"
    if (( rc != 0 )); then pass=0; note="sipp_rc=$rc"; fi
    if (( failed > 0 || ok < m )); then pass=0; note="$note failed/incomplete"; fi
    if fcmp "$gen_s < 0 || $gen_s > $DURATION + 1.5"; then pass=0; note="$note sipp_fell_behind"; fi
    if fcmp "$retrans > $m * $MAX_RETRANS_PCT / 100"; then pass=0; note="$note retrans>${MAX_RETRANS_PCT}%"; fi
    if [[ "$SUT_NAME" == cluster3 ]]; then
        if ! cluster3_leader; then note="$note no_leader_after"
        elif [[ "$CL_TERM" != "$term0" ]]; then note="$note election(term $term0->$CL_TERM, leader $leader0->$CL_LEADER)"; fi
        wf=$(( $(cluster3_write_failures) - wf0 ))
        (( wf > 0 )) && note="$note write_failed=$wf"
    fi
    printf '%-10s %-7s %-4s %7s %6s %6s %8s %8s %6s %7s %5s %5s %5s %s\n' "$SUT_NAME" "$rate" \
        "$([[ $pass == 1 ]] && echo yes || echo NO)" "$ok" "$failed" "$retrans" "$sut_drop" "$oth_drop" \
        "$gen_s" "$rate_got" "$sut_pct" "$sipp_pct" "$busy" "${note# }" | tee -a "$STEPS.reg" >&2
    (( pass == 1 ))
}

# ---------------------------------------------------------------------------------------
register_callee() { # the UAS registers as extension CALLEE from its own port (softswitch only)
    run_sipp "reg-callee" -sf "$BASE_DIR/sipp/register-auth.xml" -inf "$CALLEE_CSV" "127.0.0.1:$SUT_PORT" \
        -i 127.0.0.1 -p "$UAS_PORT" -m 1 -timeout 10s -timeout_error \
        || { cat "$SCRATCH/reg-callee.err.log" >&2 2>/dev/null; log "callee $CALLEE could not register"; return 1; }
}

call_step() {
    local rate="$1" m=$(( $1 * DURATION )) tag="calls-$SUT_NAME-$1"
    local k0 k1 s0 s1 t0 t1 rc uas_pid pass=1 note="" ud0 ud1 target i
    log "$SUT_NAME calls: $rate calls/s for ${DURATION}s ($m calls of ${CALL_MS} ms)"
    ud0="$(udp_rcvbuf_errors)"
    /usr/bin/time -f '%e %U %S' -o "$SCRATCH/$tag-uas.time" \
        sipp -sf "$BASE_DIR/sipp/uas-rr.xml" -i 127.0.0.1 -p "$UAS_PORT" -m "$m" -buff_size "$SIPP_BUF" \
        -timeout "$(( DURATION + CALL_MS / 1000 + 25 ))s" \
        -nostdin -trace_stat -stf "$SCRATCH/$tag-uas.stat.csv" -fd 1 \
        -trace_err -error_file "$SCRATCH/$tag-uas.err.log" >"$SCRATCH/$tag-uas.out" 2>&1 </dev/null &
    uas_pid=$!
    track_pid "$uas_pid"; sleep 0.3; track_tree "$uas_pid"
    udp_bound 127.0.0.1 "$UAS_PORT" || { sleep 0.5; udp_bound 127.0.0.1 "$UAS_PORT" || die "UAS did not start"; }
    local uas_sipp u0 u1
    uas_sipp="$(children_of "$uas_pid" | head -n 1)"
    # Kamailio routes by request-URI (= the UAS); the softswitch routes the number itself
    if [[ "$SUT_NAME" == kamailio ]]; then target="127.0.0.1:$UAS_PORT"; else target="127.0.0.1:$SUT_PORT"; fi

    k0="$(cpu_ticks "${SUT_PIDS[@]}")"; u0="$(cpu_ticks $uas_sipp)"; s0="$(sys_cpu)"; t0="$(date +%s.%N)"
    run_sipp "$tag" -sf "$BASE_DIR/sipp/uac-call.xml" "$target" -rsa "127.0.0.1:$SUT_PORT" \
        -s "$CALLEE" -key caller "$CALLER" \
        -i 127.0.0.1 -p "$UAC_PORT" -d "$CALL_MS" -r "$rate" -m "$m" -buff_size "$SIPP_BUF" \
        -timeout "$(( DURATION + CALL_MS / 1000 + 15 ))s" -timeout_error
    rc=$?
    k1="$(cpu_ticks "${SUT_PIDS[@]}")"; u1="$(cpu_ticks $uas_sipp)"; s1="$(sys_cpu)"; t1="$(date +%s.%N)"
    for i in $(seq 60); do kill -0 "$uas_pid" 2>/dev/null || break; sleep 0.1; done
    stop_tracked "$uas_pid" $(descendants "$uas_pid")
    ud1="$(udp_rcvbuf_errors)"

    local st created=0 ok=0 failed=0 retrans=0 dead=0 outofcall=0 watchdog=0 gen_s=-1 elapsed_s=0 rate_got=0
    st="$(python3 "$BASE_DIR/tools/sippstat.py" "$SCRATCH/$tag.stat.csv" "$m" 2>/dev/null)"
    eval "${st//rate=/rate_got=}"
    local u_ok=0 u_failed=0
    st="$(python3 "$BASE_DIR/tools/sippstat.py" "$SCRATCH/$tag-uas.stat.csv" "$m" 2>/dev/null)"
    u_ok="$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<<"$st")"; u_failed="$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' <<<"$st")"

    local wall sut_pct uac_pct uas_pct busy
    wall="$(calc %.3f "$t1 - $t0")"
    sut_pct="$(calc %.0f "($k1 - $k0) / $CLK_TCK / $wall * 100")"
    busy="$(busy_pct "$s0" "$s1")"
    uac_pct="$(sipp_cpu_pct "$tag")"
    uas_pct="?"
    (( u1 >= u0 && u1 > 0 )) && uas_pct="$(calc %.0f "($u1 - $u0) / $CLK_TCK / $wall * 100")"
    if (( rc != 0 )); then pass=0; note="uac_rc=$rc"; fi
    if (( failed > 0 || ok < m )); then pass=0; note="$note failed/incomplete"; fi
    if (( ${u_failed:-0} > 0 )); then pass=0; note="$note uas_failed"; fi
    if fcmp "$gen_s < 0 || $gen_s > $DURATION + 1.5"; then pass=0; note="$note sipp_fell_behind"; fi
    if fcmp "$retrans > $m * $MAX_RETRANS_PCT / 100"; then pass=0; note="$note retrans>${MAX_RETRANS_PCT}%"; fi
    printf '%-10s %-6s %-4s %7s %6s %6s %7s %8s %8s %6s %6s %5s %5s %5s %5s %s\n' "$SUT_NAME" "$rate" \
        "$([[ $pass == 1 ]] && echo yes || echo NO)" "$ok" "$failed" "$retrans" "${u_ok:-?}" "${u_failed:-?}" \
        "$(( ud1 - ud0 ))" "$gen_s" "$rate_got" "$sut_pct" "$uac_pct" "$uas_pct" "$busy" "${note# }" \
        | tee -a "$STEPS.calls" >&2
    if (( pass == 0 )); then
        # calls the failed step left ringing end only at the ring timeout / fr_inv_timer
        # (30 s): let them finish, or their late CANCELs and final responses land on the next
        # step's fresh UAS and UAC and count as its failures
        log "settling ${SETTLE_S}s after a failed step"
        sleep "$SETTLE_S"
    fi
    (( pass == 1 ))
}

run_ladder() { # KEY STEP_FN RATES REFINE COST
    local key="$1"
    budget_reset
    LADDER_BEST=0; LADDER_FAIL=0; LADDER_NOTE=""
    ladder "$2" "$3" "$4" "$5"
    BEST[$key]="$LADDER_BEST"; FAIL[$key]="$LADDER_FAIL"; NOTE[$key]="$LADDER_NOTE"
}

REG_COST=$(( DURATION + 20 ))
CALL_COST=$(( DURATION + CALL_MS / 1000 + 20 ))
: >"$STEPS.reg"; : >"$STEPS.calls"

not_measured() { # KEY WHY
    BEST[$1]=0; FAIL[$1]=0; NOTE[$1]="not measured: $2"; log "$1 not measured: $2"
    stop_sut
}

single_node_register() {
    if start_sut_softswitch register; then
        run_ladder softswitch/register reg_step "$REG_RATES" "$REG_REFINE" "$REG_COST"
        stop_sut
    else
        not_measured softswitch/register "the node did not start (log: softswitch-register.log)"
    fi
}

for sys in $SYSTEMS; do
    for t in $TESTS; do
        case "$sys/$t" in
            softswitch/register)
                single_node_register ;;
            softswitch/register3)
                # the single node's figure from this run: measured above, or now, same ladder
                if [[ -z "${BEST[softswitch/register]+set}" ]]; then
                    log "register3: measuring the single node first, with the same ladder"
                    single_node_register
                fi
                if start_sut_cluster3; then
                    run_ladder "$sys/$t" reg_step "$REG_RATES" "$REG_REFINE" "$REG_COST"
                    stop_sut
                else
                    not_measured "$sys/$t" "the cluster did not form (logs: cluster3*.log)"
                fi ;;
            kamailio/register3) ;;   # a softswitch-only comparison
            softswitch/calls)
                if ! start_sut_softswitch calls; then
                    not_measured "$sys/$t" "the node did not start (log: softswitch-calls.log)"
                elif ! register_callee; then
                    not_measured "$sys/$t" "callee $CALLEE could not register"
                else
                    run_ladder "$sys/$t" call_step "$CALL_RATES" "$CALL_REFINE" "$CALL_COST"
                    stop_sut
                fi ;;
            kamailio/register)
                start_sut_kamailio "$BASE_DIR/kamailio/registrar.cfg"
                run_ladder "$sys/$t" reg_step "$REG_RATES" "$REG_REFINE" "$REG_COST"
                stop_sut ;;
            kamailio/calls)
                start_sut_kamailio "$BASE_DIR/kamailio/proxy.cfg"
                run_ladder "$sys/$t" call_step "$CALL_RATES" "$CALL_REFINE" "$CALL_COST"
                stop_sut ;;
            *) die "unknown system/test $sys/$t" ;;
        esac
    done
done

ratio() { # OURS THEIRS
    if (( ${2:-0} > 0 )); then calc %.2f "$1 / $2"; else echo "n/a"; fi
}
describe() { # KEY -> note lines
    local k="$1"
    [[ -n "${NOTE[$k]:-}" ]] && echo "# $k: ${NOTE[$k]}"
    (( ${FAIL[$k]:-0} > 0 )) && echo "# $k: first failing rate ${FAIL[$k]}"
    return 0
}

echo "# softswitch ($SOFTSWITCH_BIN) vs kamailio $(kamailio -v 2>/dev/null | awk '/^version/{print $3}'), sipp $(sipp -v 2>/dev/null | awk '/SIPp/{print $2}'), ${DURATION}s per step, $NPROC cores"
echo "# pass = sipp exit 0, 0 failed calls (UAC and UAS), all calls created on time (gen_s <= $DURATION+1.5), retransmissions <= ${MAX_RETRANS_PCT}% of calls"
echo "# sut% / sipp% / uac% / uas% = CPU in % of ONE core (kamailio: all its processes); busy% = whole machine (max $(( NPROC * 100 )))"
[[ -n "$CLUSTER_TOML" ]] && echo "# every softswitch node ran with [cluster] $CLUSTER_TOML"
echo "# calls: softswitch = B2BUA with media anchored on its relay (a relay session per call, SDP rewritten), caller IP-authenticated (trusted_ips, no 407), callee registered; kamailio = stateful record-routing proxy, no auth, no registrar"
REG3=0; [[ " $TESTS " == *" register3 "* && " $SYSTEMS " == *" softswitch "* ]] && REG3=1
if [[ " $TESTS " == *" register "* ]] || (( REG3 )); then
    echo "## register_auth (REGISTER/s)$( (( REG3 )) && echo "; cluster3 = three softswitch nodes formed with switchctl, load on the leader, sut% = all three")"
    header_reg; cat "$STEPS.reg"
    for s in $SYSTEMS; do describe "$s/register"; done
    (( REG3 )) && describe softswitch/register3
fi
if [[ " $TESTS " == *" calls "* ]]; then
    echo "## calls (calls/s, hold ${CALL_MS} ms)"
    header_calls; cat "$STEPS.calls"
    for s in $SYSTEMS; do describe "$s/calls"; done
fi
[[ " $TESTS " == *" register "* ]] && echo "register_auth softswitch=${BEST[softswitch/register]:-0}/s kamailio=${BEST[kamailio/register]:-0}/s ratio=$(ratio "${BEST[softswitch/register]:-0}" "${BEST[kamailio/register]:-0}")"
if (( REG3 )); then
    r3="$(ratio "${BEST[softswitch/register3]:-0}" "${BEST[softswitch/register]:-0}")"
    met="n/a"; [[ "$r3" != n/a ]] && { fcmp "$r3 >= $CLUSTER_GOAL" && met=yes || met=NO; }
    echo "register_auth_cluster three_nodes=${BEST[softswitch/register3]:-0}/s single_node=${BEST[softswitch/register]:-0}/s ratio=$r3 goal>=$CLUSTER_GOAL met=$met"
fi
[[ " $TESTS " == *" calls "* ]] && echo "calls softswitch=${BEST[softswitch/calls]:-0} cps kamailio=${BEST[kamailio/calls]:-0} cps ratio=$(ratio "${BEST[softswitch/calls]:-0}" "${BEST[kamailio/calls]:-0}")"
exit 0
