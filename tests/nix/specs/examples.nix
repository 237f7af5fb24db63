# docs/examples/ as written: the fleet flake's outputs, called with the harness standing in for
# nixpkgs (lib.nixosSystem -> lib/nixos.nix), Home Manager (homeManagerConfiguration ->
# lib/hm.nix) and agenix (stubs/agenix-nixos.nix), and this repository's flake as the
# `nixfleet-agent` input (its package stubbed, as in flake-modules.nix).
{
  which ? "nixos",
}:
let
  sources = import <nix-harness/sources.nix>;
  inherit (sources) lib;
  stubPkgs = import <nix-harness/lib/stub-pkgs.nix> { inherit lib; };

  agentFlake = (import ../../../flake.nix).outputs {
    self = agentFlake // {
      packages = lib.genAttrs [ "x86_64-linux" "aarch64-darwin" ] (_: {
        nixfleet-agent = stubPkgs.mkDrv {
          pname = "flake-provided-agent";
          version = "1";
          meta.mainProgram = "nixfleet-agent";
        };
      });
    };
    nixpkgs = {
      inherit lib;
      legacyPackages = { };
    };
  };

  fleet = (import ../../../docs/examples/flake.nix).outputs {
    self = fleet;
    nixfleet-agent = agentFlake;
    agenix.nixosModules.default = ./stubs/agenix-nixos.nix;
    nixpkgs = {
      lib = lib // {
        nixosSystem =
          { system, modules }:
          import <nix-harness/lib/nixos.nix> { } {
            inherit system;
            extraPkgs = import ./stub-overrides.nix;
            loosePaths = [ [ "fileSystems" ] ];
            # what a NixOS system provides that the harness only stubs loosely
            modules = modules ++ [
              (
                { pkgs, ... }:
                {
                  nix.package = pkgs.nix;
                  services.nixfleet-agent.nixosRebuildPackage = pkgs.nixos-rebuild;
                }
              )
            ];
          };
      };
      legacyPackages.aarch64-darwin.system = "aarch64-darwin";
    };
    home-manager.lib.homeManagerConfiguration =
      { pkgs, modules }:
      import <nix-harness/lib/hm.nix> { } {
        inherit (pkgs) system;
        extraPkgs = import ./stub-overrides.nix;
        modules = modules ++ [ ./stubs/hm-cli.nix ];
      };
  };
in
if which == "nixos" then fleet.nixosConfigurations.web1 else fleet.homeConfigurations.laptop
