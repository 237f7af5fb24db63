# The flake's module outputs (not the module files): `default` and `nixfleet-agent` imported
# together, with the package defaulting to the flake's own. The flake's outputs are called
# with a stand-in nixpkgs (only its lib is used by the module outputs).
{
  kind ? "nixos",
  system ? "x86_64-linux",
}:
let
  sources = import <nix-harness/sources.nix>;
  flake = import ../../../flake.nix;
  outputs = flake.outputs {
    self = outputs // {
      # recognisable in the rendered units: the package the flake's modules default to
      packages.${system}.nixfleet-agent = harness.pkgs.mkDrv {
        pname = "flake-provided-agent";
        version = "1";
        meta.mainProgram = "nixfleet-agent";
      };
    };
    nixpkgs = {
      inherit (sources) lib;
      legacyPackages = { };
    };
  };
  agent = {
    enable = true;
    url = "wss://fleet.example.com/ws";
    tokenFile = "/run/agenix/nixfleet-token";
    repoUrl = "git@github.com:example/nixcfg.git";
  };
  harness =
    if kind == "nixos" then
      import <nix-harness/lib/nixos.nix> { } {
        inherit system;
        extraPkgs = import ./stub-overrides.nix;
        modules = [
          outputs.nixosModules.default
          outputs.nixosModules.nixfleet-agent
          ./nixos-host.nix
          { services.nixfleet-agent = agent; }
        ];
      }
    else if kind == "darwin" then
      import <nix-harness/lib/darwin.nix> { } {
        inherit system;
        extraPkgs = import ./stub-overrides.nix;
        modules = [
          outputs.darwinModules.default
          outputs.darwinModules.nixfleet-agent
          {
            networking.hostName = "mac1";
            services.nixfleet-agent = agent;
          }
        ];
      }
    else
      import <nix-harness/lib/hm.nix> { } {
        inherit system;
        username = "alice";
        homeDirectory = "/Users/alice";
        extraPkgs = import ./stub-overrides.nix;
        modules = [
          # the current name and the older alias, imported together
          outputs.homeModules.default
          outputs.homeManagerModules.nixfleet-agent
          { services.nixfleet-agent = agent; }
        ];
      };
in
harness
