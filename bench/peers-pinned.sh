# A PEERS_EXTRA file for ../shared/bench/peers.sh: an experiment, not the benchmark's settings.
# Before every load run it holds each pair's outbound proxy (every process and thread) to CPU 0
# and its inbound proxy to CPU 1, the same for every pair; the client and the app stay free.
# It shows how the pairs rank once the kernel's placement of four single-threaded processes on
# two CPUs is the same for all of them (bench/sched.sh explains why placement moves saturated
# throughput so much). Reported tables come from runs without this file: peers.sh pins nothing.
#
#   PEERS_EXTRA="bench/peers-palisade.sh bench/peers-pinned.sh" bash ../shared/bench/peers.sh
#
# taskset is in util-linux.

command -v taskset >/dev/null || die "peers-pinned.sh needs taskset (apt-get install util-linux)"
(($(nproc) >= 2)) || die "peers-pinned.sh needs at least 2 CPUs"

pin_pair() { # cfg: out -> CPU 0, in -> CPU 1
  local role pid p cpu
  for role in $(roles_of "$1"); do
    case $role in out) cpu=0 ;; in) cpu=1 ;; *) continue ;; esac
    pid=$(pid_for "$1" "$role")
    for p in $(descendants "$pid"); do taskset -a -p -c "$cpu" "$p" >/dev/null; done
  done
}

for load in wrk paced hey h2; do
  eval "$(declare -f "run_$load" | sed "1s/^run_$load/pinned_run_$load/")"
  eval "run_$load() { pin_pair \"\$2\"; pinned_run_$load \"\$@\"; }"
done
