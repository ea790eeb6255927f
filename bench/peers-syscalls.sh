# A PEERS_EXTRA file for ../shared/bench/peers.sh: during every hey run (1,000 req/s, in bursts
# of 10 simultaneous requests), `perf trace -s` counts the system calls of each proxy process of
# the pair, and the log gets, per pair and role, the calls per answered request by syscall with
# their failures (an EAGAIN read is a wakeup that found nothing). This is the run that the
# "vCPU per 1k req/s" column comes from, so it shows where a pair's CPU at that rate goes
# beyond its user-space work. Tracing costs CPU, so figures from a run with this file are for
# the syscall counts only: leave it out of runs whose table is reported.
#
#   PEERS_EXTRA="bench/peers-palisade.sh bench/peers-syscalls.sh" PEERS_ROUNDS=1 \
#     PEERS_CONFIGS="nginx_pair haproxy_pair palisade_pair" bash ../shared/bench/peers.sh
#
# Env: PEERS_SYSCALLS_OUT=/tmp/peers-syscalls.txt (one line per pair, role and syscall:
#      round config role syscall calls errors calls-per-request errors-per-request)
# perf is linux-perf from Debian.

command -v perf >/dev/null || die "peers-syscalls.sh needs perf (apt-get install linux-perf)"
SYSCALLS_OUT=${PEERS_SYSCALLS_OUT:-/tmp/peers-syscalls.txt}
: >"$SYSCALLS_OUT"

# peers.sh's own run_hey, kept under another name and called in between.
eval "$(declare -f run_hey | sed '1s/^run_hey/peers_run_hey/')"

run_hey() { # round cfg
  local r=$1 c=$2 role pid tracers=() roles=() trace
  for role in $(roles_of "$c"); do
    [[ $role == app ]] && continue
    pid=$(pid_for "$c" "$role")
    trace=$WORK/raw/r$r.$c.$role.syscalls.txt
    # Every process of the role (nginx's master and worker), every thread of each.
    perf trace -s -p "$(descendants "$pid" | paste -sd,)" -o "$trace" 2>"$trace.err" &
    tracers+=("$!") roles+=("$role")
  done
  ((${#tracers[@]} == 0)) || sleep 1 # perf attaches before the load starts
  peers_run_hey "$@"
  ((${#tracers[@]} == 0)) && return 0
  kill -INT "${tracers[@]}" 2>/dev/null || true
  wait "${tracers[@]}" 2>/dev/null || true
  local answered i
  answered=$(awk '/Status code distribution:/{s=1;next} /Error distribution:/{s=0} s==1 && /\[[0-9]+\]/{n+=$2} END{print n+0}' "$WORK/raw/r$r.$c.hey.txt")
  for i in "${!roles[@]}"; do
    trace=$WORK/raw/r$r.$c.${roles[$i]}.syscalls.txt
    [[ -s $trace ]] || { log "perf trace for $c ${roles[$i]} wrote nothing: $(cat "$trace.err")"; continue; }
    # perf trace -s: a table per thread, "syscall calls errors total min avg max stddev";
    # summed over threads.
    awk -v r="$r" -v c="$c" -v role="${roles[$i]}" -v n="$answered" '
      $1 ~ /^[a-z_0-9]+$/ && $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ && NF >= 8 { calls[$1] += $2; errs[$1] += $3 }
      END { for (s in calls) printf "%s %s %s %s %d %d %.3f %.3f\n", r, c, role, s, calls[s], errs[s], calls[s] / n, errs[s] / n }
    ' "$trace" | sort -k7,7gr >>"$SYSCALLS_OUT"
    log "round $r $c ${roles[$i]}: system calls per request (failed): $(awk -v r="$r" -v c="$c" -v role="${roles[$i]}" '
      $1 == r && $2 == c && $3 == role { t += $7; printf "%s %.2f (%.2f), ", $4, $7, $8 } END { printf "total %.2f", t }' "$SYSCALLS_OUT")"
  done
}
