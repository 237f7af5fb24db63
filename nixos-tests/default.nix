# NixOS VM tests of the agent and its modules, for `nix flake check` (the flake wires this
# attrset into checks.<system>). Fully offline: every node's closure is built by Nix, the
# dashboard is tests/dashboard.py, the fleet repository is served by `git daemon` on `server`,
# and secrets are written by the test scripts at run time, never by Nix.
#
# Each test's script is its own .py file, preceded by driver_helpers.py; the type check (mypy)
# and lint (pyflakes) the test driver runs on it before any VM starts are reproduced by
# tests/system/test_vm_scripts.py.
{ pkgs, self }:
let
  common = import ./common.nix { inherit pkgs self; };

  script = name: builtins.readFile ./driver_helpers.py + builtins.readFile (./. + "/${name}.py");

  mkTest =
    name: nodes:
    pkgs.testers.runNixOSTest {
      name = "nixfleet-agent-${name}";
      inherit nodes;
      testScript = script name;
    };

  # nixos-rebuild as the privileged unit calls it, for a VM without a fleet flake to build: it
  # prints who runs it with which arguments, reads the specialisation named by the file `target`
  # in the requested commit, and switches to that configuration (pre-built in the VM's store).
  rebuildShim = pkgs.writeShellScriptBin "nixos-rebuild" ''
    set -eu
    echo "nixos-rebuild-shim uid=$(id -u) args=$*"
    action=""
    flake=""
    for arg in "$@"; do
      case "$arg" in
        switch|boot|test) [ -n "$action" ] || action=$arg ;;
        git+file://*) flake=$arg ;;
      esac
    done
    repo=''${flake#git+file://}
    repo=''${repo%%\?*}
    rev=''${flake##*rev=}
    rev=''${rev%%[#&]*}
    target=$(${pkgs.git}/bin/git -c safe.directory="$repo" -C "$repo" show "$rev:target")
    echo "nixos-rebuild-shim switching to specialisation $target"
    exec /run/booted-system/specialisation/"$target"/bin/switch-to-configuration "$action"
  '';

  switchAgent =
    { lib, ... }:
    {
      imports = [
        (common.agent {
          nixosRebuildPackage = rebuildShim;
          # the shim switches to pre-built specialisations: the fleet flake has no toplevel for
          # root to build and compare the switch inhibitors of
          preflight.switchInhibitors = false;
        })
      ];
      specialisation.same.configuration = {
        environment.etc."fleet-target".text = "same";
      };
      specialisation.newagent.configuration = {
        environment.etc."fleet-target".text = "newagent";
        services.nixfleet-agent.package = lib.mkForce (
          # another store path for the same agent; its test suite already ran for the original
          common.agentPackage.overrideAttrs (old: {
            doCheck = false;
            doInstallCheck = false;
            postInstall = (old.postInstall or "") + ''
              echo newagent > $out/changed-marker
            '';
          })
        );
      };
    };
  # The health test's nixos-rebuild: like rebuildShim, but it also points the system profile at
  # the specialisation (nix-env --set), as nixos-rebuild does, so root's health gate has a
  # previous generation to go back to.
  healthRebuildShim = pkgs.writeShellScriptBin "nixos-rebuild" ''
    set -eu
    echo "nixos-rebuild-shim uid=$(id -u) args=$*"
    flake=""
    for arg in "$@"; do
      case "$arg" in
        git+file://*) flake=$arg ;;
      esac
    done
    repo=''${flake#git+file://}
    repo=''${repo%%\?*}
    rev=''${flake##*rev=}
    rev=''${rev%%[#&]*}
    target=$(${pkgs.git}/bin/git -c safe.directory="$repo" -C "$repo" show "$rev:target")
    system=$(readlink -f /run/booted-system/specialisation/"$target")
    echo "nixos-rebuild-shim switching to specialisation $target ($system)"
    ${pkgs.nix}/bin/nix-env -p /nix/var/nix/profiles/system --set "$system"
    exec "$system"/bin/switch-to-configuration switch
  '';

  healthAgent =
    { lib, pkgs, ... }:
    {
      imports = [ (common.agent { nixosRebuildPackage = healthRebuildShim; }) ];
      services.nixfleet-agent.health = {
        gracePeriod = 60;
        units = [ "fleet-app.service" ];
      };
      environment.etc."fleet-target".text = lib.mkDefault "base";
      systemd.services.fleet-app = {
        description = "the fleet's application";
        wantedBy = [ "multi-user.target" ];
        serviceConfig.ExecStart = lib.mkDefault "${pkgs.coreutils}/bin/sleep infinity";
      };
      specialisation.broken.configuration = {
        environment.etc."fleet-target".text = "broken";
        # starts, then dies a second later: only the health checks can tell
        systemd.services.fleet-app.serviceConfig.ExecStart = "${pkgs.bash}/bin/bash -c 'sleep 1; exit 3'";
      };
      specialisation.fine.configuration = {
        environment.etc."fleet-target".text = "fine";
      };
    };
in
{
  vm-health = mkTest "health" {
    server = common.server;
    agent = healthAgent;
  };

  vm-registration = mkTest "registration" {
    server = common.server;
    agent = common.agent { };
  };

  vm-repository = mkTest "repository" {
    server = common.server;
    agent = common.agent { };
  };

  vm-switch = mkTest "switch" {
    server = common.server;
    agent = switchAgent;
  };

  vm-root-boundary = mkTest "root-boundary" {
    server = common.server;
    agent = switchAgent;
  };

  vm-secrets = mkTest "secrets" {
    server = common.server;
    agent = common.agent { };
  };
}
// (
  if self.inputs ? home-manager then
    {
      vm-home-manager = mkTest "home-manager" {
        server = common.server;
        workstation = {
          imports = [ self.inputs.home-manager.nixosModules.home-manager ];
          users.users.alice = {
            isNormalUser = true;
            uid = 1000;
            linger = true;
          };
          # alice's packages land in /etc/profiles/per-user/alice/bin, home-manager only there
          home-manager.useUserPackages = true;
          home-manager.users.alice = {
            imports = [ self.homeManagerModules.nixfleet-agent ];
            home.stateVersion = "24.05";
            programs.home-manager.enable = true;
            services.nixfleet-agent = {
              enable = true;
              package = common.agentPackage;
              url = "ws://server:8000/ws";
              tokenFile = "/home/alice/.config/nixfleet/token";
              repoUrl = "git://server/fleet.git";
              hostname = "workstation";
              interval = 2;
              # the VM's writable store is a small tmpfs overlay (see common.nix)
              preflight.storeMinFree = 64 * 1024 * 1024;
            };
          };
        };
      };
    }
  else
    { }
)
