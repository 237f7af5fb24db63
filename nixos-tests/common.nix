# Node configurations shared by the VM tests.
#
# `server` runs the reference dashboard (tests/dashboard.py, port 8000) and a `git daemon`
# serving /srv/git (port 9418); `agent` runs the NixOS module. Tokens and keys are written by
# the test scripts at run time into /run/nixfleet, never by Nix, so they are not in any store
# path (the secrets test checks exactly that).
{ pkgs, self }:
let
  system = pkgs.stdenv.hostPlatform.system;
  python = pkgs.python3.withPackages (ps: [ ps.websockets ]);
  dashboardScript = ../tests/dashboard.py;
in
rec {
  tokenFile = "/run/nixfleet/token";

  agentPackage = self.packages.${system}.nixfleet-agent;

  server =
    { pkgs, ... }:
    {
      networking.firewall.allowedTCPPorts = [
        8000
        9418
      ];
      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
        pkgs.git
      ];
      # Started by the test scripts once they have written the token.
      systemd.services.nixfleet-dashboard = {
        description = "reference NixFleet dashboard";
        serviceConfig.ExecStart = "${python}/bin/python3 ${dashboardScript} --listen 0.0.0.0 --port 8000 --token-file ${tokenFile}";
      };
      systemd.services.fleet-git = {
        description = "git daemon serving the fleet repository";
        wantedBy = [ "multi-user.target" ];
        preStart = "mkdir -p /srv/git";
        serviceConfig.ExecStart = "${pkgs.git}/bin/git daemon --reuseaddr --base-path=/srv/git --export-all /srv/git";
      };
    };

  # The agent node; `extra` is merged into services.nixfleet-agent.
  agent =
    extra:
    { lib, ... }:
    {
      imports = [ self.nixosModules.nixfleet-agent ];
      environment.systemPackages = [
        pkgs.git
        pkgs.jq
      ];
      services.nixfleet-agent = lib.mkMerge [
        {
          enable = true;
          package = agentPackage;
          url = "ws://server:8000/ws";
          inherit tokenFile;
          repoUrl = "git://server/fleet.git";
          hostname = "agent";
          interval = 2;
          logLevel = "debug";
          # a test VM's writable store is an overlay on a tmpfs of half its RAM: the 1 GiB
          # default would refuse every switch (docs/guard-rails.md)
          preflight.storeMinFree = 64 * 1024 * 1024;
        }
        extra
      ];
    };
}
