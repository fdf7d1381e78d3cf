#!/bin/sh
# Starts and stops the coder-mesh agent of one local workspace; main.tf runs it.
#
#   sh agent.sh prepare   create the workspace folder and its home
#   sh agent.sh start     start the agent in the background (stopping an earlier one)
#   sh agent.sh check     fail, showing the end of the agent's log, if it exited at once
#   sh agent.sh stop      stop the agent: SIGTERM to its process group, SIGKILL after 10 s;
#                         then every other process of the workspace the same way
#   sh agent.sh remove    stop as above and delete the workspace folder
#
# A process of the workspace is one whose environment holds exactly
# CODER_MESH_AGENT_DIR=<the folder>: the agent and everything it started,
# such as SSH sessions, which run in sessions of their own and so outlive an
# agent that was killed.
#
# CODER_MESH_AGENT_DIR names the workspace folder. "start" also needs
# CODER_MESH_AGENT_COMMAND, CODER_MESH_URL and CODER_MESH_AGENT_TOKEN.
set -eu

dir=${CODER_MESH_AGENT_DIR:?CODER_MESH_AGENT_DIR is not set}
dir=${dir%/}
case $dir in
  *'
'*)
    echo "agent.sh: CODER_MESH_AGENT_DIR must not contain a newline" >&2
    exit 2
    ;;
  /?*) ;;
  *)
    echo "agent.sh: CODER_MESH_AGENT_DIR must be an absolute folder other than /, not '$dir'" >&2
    exit 2
    ;;
esac
pidfile=$dir/agent.pid
logfile=$dir/agent.log
# Only a folder holding this marker was made by "prepare" and may be removed.
marker=$dir/.coder-mesh-workspace

# The live (not zombie) processes whose pid or process group is $1, one a line.
members() {
  if command -v ps >/dev/null 2>&1; then
    ps -e -o pid= -o pgid= -o stat= 2>/dev/null |
      awk -v g="$1" '($1 == g || $2 == g) && $3 !~ /^Z/ { print $1 }'
  elif kill -0 "$1" 2>/dev/null; then
    echo "$1"
  fi
}

# True when process group $1 is still this workspace's agent: one of its
# processes has our folder in its environment. This guards against a stale
# pid file whose number now belongs to another program.
ours() {
  for p in $(members "$1"); do
    [ -r "/proc/$p/environ" ] || return 0 # no /proc: trust the pid file
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -Fqx "CODER_MESH_AGENT_DIR=$dir"; then
      return 0
    fi
  done
  return 1
}

# Sends signal $1 to process group $2, and to process $2 itself (it leads no
# group when setsid was missing). The shell's own kill cannot always signal a
# group ("kill -TERM -- -PID" fails in dash), hence env kill.
signal() {
  env kill -s "$1" -- "-$2" 2>/dev/null || true
  env kill -s "$1" "$2" 2>/dev/null || true
}

# Waits up to $2 tenths of a second for process group $1 to end; true if it did.
wait_gone() {
  i=0
  while [ -n "$(members "$1")" ]; do
    [ "$i" -lt "$2" ] || return 1
    sleep 0.1
    i=$((i + 1))
  done
}

stop_group() {
  if [ ! -f "$pidfile" ]; then
    echo "agent: not running"
    return 0
  fi
  pid=$(cat "$pidfile" 2>/dev/null || true)
  case $pid in
    '' | *[!0-9]*)
      echo "agent: ignoring the malformed pid file $pidfile"
      rm -f "$pidfile"
      return 0
      ;;
  esac
  if ! ours "$pid"; then
    echo "agent: not running (process $pid is gone)"
    rm -f "$pidfile"
    return 0
  fi
  echo "agent: stopping process group $pid"
  signal TERM "$pid"
  if ! wait_gone "$pid" 100; then
    echo "agent: still running after 10 s; killing it"
    signal KILL "$pid"
    wait_gone "$pid" 20 || echo "agent: process group $pid survived SIGKILL" >&2
  fi
  rm -f "$pidfile"
  echo "agent: stopped"
}

# The session of live process $1; nothing for a zombie or a process that is gone.
session_of() {
  # The fields after the command name, which ends at the last ")": state,
  # parent, process group, session, ...
  fields=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null) || return 0
  # shellcheck disable=SC2086 # split into fields on purpose
  set -- $fields
  [ "$#" -ge 4 ] && [ "$1" != Z ] && [ "$1" != X ] && echo "$4"
  return 0
}

# /proc/<pid>/environ of each process with CODER_MESH_AGENT_DIR=$dir in its
# environment, matched as one whole NUL-terminated entry.
environ_matches() {
  if printf 'a\0' | grep -qxz a 2>/dev/null; then
    grep -lFxz -e "CODER_MESH_AGENT_DIR=$dir" /proc/[0-9]*/environ 2>/dev/null || true
  else
    for f in /proc/[0-9]*/environ; do
      if tr '\0' '\n' <"$f" 2>/dev/null | grep -Fqx -e "CODER_MESH_AGENT_DIR=$dir"; then
        echo "$f"
      fi
    done
  fi
}

# The workspace's live processes, one pid a line, leaving out this script's
# own session: this script, the build that runs it and the commands it runs
# carry the same variable. Nothing without /proc.
strays() {
  [ -r /proc/self/stat ] || return 0
  own=$(session_of $$)
  [ -n "$own" ] || return 0
  for f in $(environ_matches); do
    p=${f#/proc/}
    p=${p%/environ}
    case $p in '' | *[!0-9]*) continue ;; esac
    s=$(session_of "$p")
    if [ -n "$s" ] && [ "$s" != "$own" ]; then echo "$p"; fi
  done
}

# Stops every process of the workspace the agent's process group did not
# hold: SIGTERM, then SIGKILL to what is left after 10 s.
stop_strays() {
  pids=$(strays)
  [ -n "$pids" ] || return 0
  echo "agent: stopping the workspace's other processes:" $pids
  termed=' '
  i=0
  while [ -n "$pids" ] && [ "$i" -lt 100 ]; do
    for p in $pids; do
      case $termed in
        *" $p "*) ;;
        *)
          kill -s TERM "$p" 2>/dev/null || true
          termed="$termed$p "
          ;;
      esac
    done
    sleep 0.1
    i=$((i + 1))
    pids=$(strays)
  done
  [ -n "$pids" ] || return 0
  echo "agent: still running after 10 s; killing:" $pids
  i=0
  while [ -n "$pids" ] && [ "$i" -lt 20 ]; do
    for p in $pids; do kill -s KILL "$p" 2>/dev/null || true; done
    sleep 0.1
    i=$((i + 1))
    pids=$(strays)
  done
  if [ -n "$pids" ]; then echo "agent: processes survived SIGKILL:" $pids >&2; fi
}

# Stops the agent and every process of the workspace.
stop_agent() {
  stop_group
  stop_strays
}

prepare() {
  mkdir -p "$dir/home"
  chmod 700 "$dir"
  : >"$marker"
  echo "workspace folder: $dir"
}

start_agent() {
  cmd=${CODER_MESH_AGENT_COMMAND:?CODER_MESH_AGENT_COMMAND is not set}
  : "${CODER_MESH_URL:?CODER_MESH_URL is not set}"
  : "${CODER_MESH_AGENT_TOKEN:?CODER_MESH_AGENT_TOKEN is not set}"
  # One left behind by an earlier build that failed half way.
  stop_agent
  [ -d "$dir/home" ] || prepare

  # Terraform's TF_VAR_* copies of the variables, the token among them, stay
  # out of the agent and so out of every shell it runs.
  for name in $(env | sed -n 's/^\(TF_[A-Za-z0-9_]*\)=.*/\1/p'); do
    unset "$name"
  done
  unset CODER_MESH_AGENT_COMMAND
  HOME=$dir/home
  CODER_MESH_AGENT_DIR=$dir
  export HOME CODER_MESH_URL CODER_MESH_AGENT_TOKEN CODER_MESH_AGENT_DIR
  cd "$dir/home"

  echo "--- agent starting at $(date -u '+%Y-%m-%dT%H:%M:%SZ')" >>"$logfile"
  # The agent must not hold Terraform's output pipes (or Terraform waits for
  # it), so all three standard streams are redirected. A background job of a
  # non-interactive shell leads no process group, so setsid does not fork and
  # $! is the pid of the new session, whose group holds the agent.
  if command -v setsid >/dev/null 2>&1; then
    setsid nohup sh -c "$cmd" >>"$logfile" 2>&1 </dev/null &
  else
    nohup sh -c "$cmd" >>"$logfile" 2>&1 </dev/null &
  fi
  echo "$!" >"$pidfile"
}

check_agent() {
  pid=$(cat "$pidfile")
  # Give a command that cannot start at all a moment to fail.
  i=0
  while [ "$i" -lt 10 ] && [ -n "$(members "$pid")" ]; do
    sleep 0.1
    i=$((i + 1))
  done
  if [ -z "$(members "$pid")" ]; then
    echo "agent: exited right after it started; the end of $logfile:" >&2
    tail -n 20 "$logfile" >&2
    rm -f "$pidfile"
    exit 1
  fi
  echo "agent: running as process group $pid, logging to $logfile"
}

remove() {
  stop_agent
  if [ ! -e "$dir" ]; then
    echo "workspace folder already gone: $dir"
  elif [ ! -f "$marker" ]; then
    echo "not removing $dir: it lacks the marker $marker" >&2
  else
    rm -rf -- "$dir"
    echo "workspace folder removed: $dir"
  fi
}

case ${1:-} in
  prepare) prepare ;;
  start) start_agent ;;
  check) check_agent ;;
  stop) stop_agent ;;
  remove) remove ;;
  *)
    echo "usage: sh agent.sh prepare|start|check|stop|remove" >&2
    exit 2
    ;;
esac
