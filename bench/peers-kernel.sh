# A PEERS_EXTRA file for ../shared/bench/peers.sh: during every wrk and h2load run (saturated,
# the runs behind the throughput columns) and hey run (1,000 req/s, the run behind the "vCPU per 1k
# req/s" column), it splits each process's CPU per answered request into user and system time,
# adds the whole machine's CPU per request (user, system, softirq: the client and everything
# else included), and counts the machine's TCP segments per request (nstat). Together they say
# whether a pair's extra CPU is its own code (user) or work it makes the kernel do (more
# segments, pure ACKs, system time), and how much of a saturated run's CPU a proxy's own code
# could ever win back. The machine's idle time and each process's run-queue wait say whether a
# saturated pair is short of CPU or leaves CPU unused (bench/sched.sh). It reads counters before and after each run only, so its figures and
# the table's come from the same runs.
#
#   PEERS_EXTRA="bench/peers-palisade.sh bench/peers-kernel.sh" \
#     PEERS_CONFIGS="direct nginx_pair haproxy_pair palisade_pair" bash ../shared/bench/peers.sh
#
# Env: PEERS_KERNEL_OUT=/tmp/peers-kernel.txt, one line per round, config, load, role and
#      figure: "round config load role figure value", all per answered request. Role "machine"
#      is the /proc/stat total (user includes nice; idle_us is time no CPU had work), role
#      "tcp" the machine's segment counts. user_us/sys_us/softirq_us come from 10 ms clock
#      ticks; runq_wait_us (runnable but not running) and slices (times scheduled in) from
#      each thread's schedstat.
# nstat is in iproute2.

command -v nstat >/dev/null || die "peers-kernel.sh needs nstat (apt-get install iproute2)"
KERNEL_OUT=${PEERS_KERNEL_OUT:-/tmp/peers-kernel.txt}
: >"$KERNEL_OUT"
# nstat keeps the previous reading in a history file; this run's own, so no other nstat user
# moves our baseline.
export NSTAT_HISTORY=$WORK/nstat.history
KERNEL_HZ=$(getconf CLK_TCK)

# peers.sh's own load runs, kept under other names and called in between.
eval "$(declare -f run_hey | sed '1s/^run_hey/kernel_run_hey/')"
eval "$(declare -f run_wrk | sed '1s/^run_wrk/kernel_run_wrk/')"
eval "$(declare -f run_h2 | sed '1s/^run_h2/kernel_run_h2/')"
run_hey() { kernel_measured hey "$@"; }
run_wrk() { kernel_measured wrk "$@"; }
run_h2() { kernel_measured h2 "$@"; }

proc_counters() { # pid -> "user system" clock ticks, "runqueue-wait-ns slices" of all threads
  local p line user=0 sys=0 wait=0 slices=0 t
  local -a f q
  for p in $(descendants "$1"); do
    line=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    read -r -a f <<<"${line##*) }"
    user=$((user + f[11])) sys=$((sys + f[12]))
    for t in /proc/"$p"/task/*/schedstat; do
      read -r -a q <"$t" 2>/dev/null || continue
      wait=$((wait + q[1])) slices=$((slices + q[2]))
    done
  done
  echo "$user $sys $wait $slices"
}
machine_ticks() { # -> "user system softirq idle" clock ticks of the whole machine (/proc/stat)
  awk '$1 == "cpu" { print $2 + $3, $4, $8, $5 + $6; exit }' /proc/stat
}
answered_by() { # load round cfg -> requests answered in that run
  case $1 in
    wrk) awk '/requests in/{print $1; exit}' "$WORK/raw/r$2.$3.wrk.txt" ;;
    h2) awk '/^requests:/{gsub(/,/,""); print $8; exit}' "$WORK/raw/r$2.$3.h2.txt" ;;
    hey) awk '/Status code distribution:/{s=1;next} /Error distribution:/{s=0} s==1 && /\[[0-9]+\]/{n+=$2} END{print n+0}' "$WORK/raw/r$2.$3.hey.txt" ;;
  esac
}
per_request() { # label value scale [printf-format] -> "label value*scale/answered"
  awk -v l="$1" -v v="$2" -v k="$3" -v f="${4:-%.1f}" -v n="$answered" 'BEGIN { printf "%s " f "\n", l, v * k / n }'
}

kernel_measured() { # load round cfg
  local load=$1 r=$2 c=$3 role i answered tick_us u0 s0 x0 i0 w0 n0 u1 s1 x1 i1 w1 n1 m0 m1
  local -a roles=() pids=() before=()
  for role in $(roles_of "$c"); do
    roles+=("$role") pids+=("$(pid_for "$c" "$role")")
    before+=("$(proc_counters "${pids[-1]}")")
  done
  nstat -n >/dev/null
  m0=$(machine_ticks)
  "kernel_run_$load" "$r" "$c"
  m1=$(machine_ticks)
  # A pair without an h2c port (floor_pair) has no h2load run to count.
  [[ -f $WORK/raw/r$r.$c.$load.txt ]] || return 0
  answered=$(answered_by "$load" "$r" "$c")
  ((${answered:-0} > 0)) || { log "peers-kernel: no answered requests in $load on $c"; return 0; }
  {
    nstat -z 2>/dev/null | awk -v p="$r $c $load tcp" -v n="$answered" '
      $1 ~ /^(TcpOutSegs|TcpExtTCPPureAcks|TcpExtDelayedACKs|TcpRetransSegs)$/ { printf "%s %s %.3f\n", p, $1, $2 / n }'
    read -r u0 s0 x0 i0 <<<"$m0"
    read -r u1 s1 x1 i1 <<<"$m1"
    tick_us=$(awk -v hz="$KERNEL_HZ" 'BEGIN { print 1e6 / hz }')
    {
      per_request user_us $((u1 - u0)) "$tick_us"
      per_request sys_us $((s1 - s0)) "$tick_us"
      per_request softirq_us $((x1 - x0)) "$tick_us"
      per_request idle_us $((i1 - i0)) "$tick_us"
    } | sed "s/^/$r $c $load machine /"
    for i in "${!roles[@]}"; do
      read -r u0 s0 w0 n0 <<<"${before[$i]}"
      read -r u1 s1 w1 n1 <<<"$(proc_counters "${pids[$i]}")"
      {
        per_request user_us $((u1 - u0)) "$tick_us"
        per_request sys_us $((s1 - s0)) "$tick_us"
        per_request runq_wait_us $((w1 - w0)) 0.001
        per_request slices $((n1 - n0)) 1 %.3f
      } | sed "s/^/$r $c $load ${roles[$i]} /"
    done
  } >>"$KERNEL_OUT"
  log "round $r $c $load, per request: $(awk -v p="$r $c $load" '
    index($0, p " ") == 1 && $4 == "tcp" && $5 == "TcpOutSegs" { printf "TCP segments %s; ", $6 }
    index($0, p " ") == 1 && $4 != "tcp" { printf "%s %s %s; ", $4, $5, $6 }' "$KERNEL_OUT")"
}
