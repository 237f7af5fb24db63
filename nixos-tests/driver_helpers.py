# ruff: noqa: F821 - the NixOS test driver provides start_all, subtest, the machines and the helpers
# Helpers shared by the VM test scripts; default.nix puts this file in front of each script.
# They talk to the reference dashboard's control API on `server` (tests/dashboard.py) with curl
# and jq, and keep every wait bounded.
import json
import shlex

TOKEN_FILE = "/run/nixfleet/token"
FLEET_BARE = "/srv/git/fleet.git"
FLEET_WORK = "/root/fleet-work"
WAIT = 120


def write_secret(machine, path, value, owner="root"):
    """A runtime secret: written by the test, never by Nix, so it is in no store path."""
    directory = path.rsplit("/", 1)[0]
    machine.succeed(
        f"install -d -m 0700 -o {owner} {shlex.quote(directory)}"
        f" && (umask 077; printf %s {shlex.quote(value)} > {shlex.quote(path)})"
        f" && chown {owner} {shlex.quote(path)}"
    )


def start_dashboard(token):
    write_secret(server, TOKEN_FILE, token)
    server.succeed("systemctl start nixfleet-dashboard")
    server.wait_for_open_port(8000)


def api_command(path):
    """A shell command fetching `path` from the dashboard's control API (token read on `server`)."""
    return f"curl -sf -H \"Authorization: Bearer $(cat {TOKEN_FILE})\" 'http://localhost:8000{path}'"


def api(path):
    return json.loads(server.succeed(api_command(path)))


def wait_api(path, jq_filter, timeout=WAIT):
    server.wait_until_succeeds(f"{api_command(path)} | jq -e {shlex.quote(jq_filter)}", timeout=timeout)
    return api(path)


def wait_registered(host, registrations=1):
    hosts = wait_api("/api/hosts", f'.["{host}"].connected and .["{host}"].registrations >= {registrations}')
    return hosts[host]


def wait_heartbeats(host, count, since=0):
    wait_api(f"/api/messages?host={host}&type=heartbeat&since={since}", f"length >= {count}")


def mark():
    return len(api("/api/messages"))


def send_command(host, command):
    since = mark()
    assert api(f"/api/command?host={host}&command={command}")["sent"], f"dashboard could not send {command}"
    return since


def wait_status(host, command, since, timeout=WAIT):
    path = f"/api/messages?host={host}&type=status&since={since}"
    found = wait_api(path, f'map(select(.payload.command == "{command}")) | length >= 1', timeout)
    return next(m for m in found if m["payload"]["command"] == command)["payload"]


def output_lines(host, since):
    return [m["payload"]["line"] for m in api(f"/api/messages?host={host}&type=output&since={since}")]


def fleet_commit(files, message):
    """Commit `files` ({path: text}) to the fleet repo on `server`; return the new commit id."""
    server.succeed(
        f"test -d {FLEET_BARE} || git init -q --bare --initial-branch=main {FLEET_BARE}",
        f"test -d {FLEET_WORK} || (git init -q --initial-branch=main {FLEET_WORK}"
        f" && git -C {FLEET_WORK} remote add origin {FLEET_BARE})",
    )
    for name, text in files.items():
        server.succeed(f"mkdir -p $(dirname {FLEET_WORK}/{name}) && printf %s {shlex.quote(text)} > {FLEET_WORK}/{name}")
    server.succeed(
        f"cd {FLEET_WORK} && git add -A && git -c user.name=t -c user.email=t@t commit -q -m {shlex.quote(message)}"
        f" && git push -q -f origin HEAD:main"
    )
    return server.succeed(f"git -C {FLEET_WORK} rev-parse HEAD").strip()


def agent_pid(machine, unit="nixfleet-agent.service", user=None):
    scope = f"--machine={user}@ --user " if user else ""
    return int(machine.succeed(f"systemctl {scope}show --value -p MainPID {unit}").strip())
