#!/bin/sh
# NixFleet agent watchdog for macOS (run by launchd every 30 s, see modules/home-manager.nix and
# modules/darwin.nix).
#
#   watchdog.sh LABEL PLIST ALIVE_FILE MAX_AGE_SECONDS [DOMAIN]
#
# DOMAIN is the launchd domain of the agent: gui/<uid of the caller> (the default, the Home
# Manager launchd agent) or system (the nix-darwin daemon; the watchdog then runs as root).
#
# launchd's KeepAlive restarts an agent that exits, but not one that was booted out (e.g.
# by an interrupted Home Manager activation) or one that hangs. So:
#   not loaded                        -> launchctl bootstrap DOMAIN PLIST
#   loaded, not running               -> launchctl kickstart DOMAIN/LABEL
#   running, ALIVE_FILE older than MAX_AGE (the agent touches it at every heartbeat)
#                                     -> launchctl kickstart -k DOMAIN/LABEL
#   otherwise                         -> nothing (and no log line)
# Every action is logged as one key=value line saying what was found and done. Exit status: 0 when the
# agent is (being) brought up, 1 when an action failed, 2 on bad arguments.

set -u

log() {
  # log LEVEL EVENT [key=value ...]
  level=$1
  event=$2
  shift 2
  printf '%s level=%s component=watchdog event=%s label=%s' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$level" "$event" "$label"
  for field in "$@"; do
    printf ' %s' "$field"
  done
  printf '\n'
}

label=${1:-}
if [ "$#" -ne 4 ] && [ "$#" -ne 5 ]; then
  log error usage "got=$#" 'expected="LABEL PLIST ALIVE_FILE MAX_AGE_SECONDS [DOMAIN]"'
  exit 2
fi
plist=$2
alive=$3
max_age=$4
case $max_age in
  '' | *[!0-9]*)
    log error usage "max_age=\"$max_age\"" 'reason="MAX_AGE_SECONDS must be a whole number"'
    exit 2
    ;;
esac

domain=${5:-gui/$(id -u)}
case $domain in
  system | gui/[0-9]*) ;;
  *)
    log error usage "domain=\"$domain\"" 'reason="DOMAIN must be system or gui/<uid>"'
    exit 2
    ;;
esac
target="$domain/$label"

# mtime of a file in seconds since the epoch: GNU stat first (no output on BSD, where -c is
# unknown), then BSD stat.
mtime() {
  stat -c %Y "$1" 2>/dev/null || stat -f %m "$1" 2>/dev/null
}

if ! info=$(launchctl print "$target" 2>/dev/null); then
  if [ ! -f "$plist" ]; then
    log error not-loaded action=none "plist=\"$plist\"" 'reason="plist missing; run home-manager switch or darwin-rebuild switch"'
    exit 1
  fi
  if out=$(launchctl bootstrap "$domain" "$plist" 2>&1); then
    log warn not-loaded action=bootstrap "plist=\"$plist\""
    exit 0
  fi
  log error not-loaded action=bootstrap result=failed "output=\"$(printf '%s' "$out" | tr '\n"' ' _')\""
  exit 1
fi

pid=$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*pid = \([0-9][0-9]*\)[[:space:]]*$/\1/p' | head -n 1)
state=$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*state = \([a-z ]*[a-z]\)[[:space:]]*$/\1/p' | head -n 1)

if [ -z "$pid" ] || [ "$state" != "running" ]; then
  if out=$(launchctl kickstart "$target" 2>&1); then
    log warn not-running action=kickstart "state=\"${state:-unknown}\""
    exit 0
  fi
  log error not-running action=kickstart result=failed "output=\"$(printf '%s' "$out" | tr '\n"' ' _')\""
  exit 1
fi

if ! modified=$(mtime "$alive") || [ -z "$modified" ]; then
  # Not written yet: the agent has just started and not sent its first heartbeat.
  log info running action=none "pid=$pid" 'alive=missing'
  exit 0
fi

age=$(($(date +%s) - modified))
if [ "$age" -gt "$max_age" ]; then
  if out=$(launchctl kickstart -k "$target" 2>&1); then
    log warn hung action=kickstart-k "pid=$pid" "alive_age=$age" "max_age=$max_age"
    exit 0
  fi
  log error hung action=kickstart-k result=failed "pid=$pid" "output=\"$(printf '%s' "$out" | tr '\n"' ' _')\""
  exit 1
fi

# healthy: nothing to do and nothing to log (this runs every 30 s)
exit 0
