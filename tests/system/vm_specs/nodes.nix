# The VM tests' node configurations (nixos-tests/common.nix), evaluated with the nix-harness
# against the real NixOS systemd module and this repository's NixOS module: option names and
# types, the module's assertions, and the units they render. The package set is the harness'
# stub set with the project's package (tests/nix/specs/stub-overrides.nix); nothing is built.
{ repo, node }:
let
  sources = import <nix-harness/sources.nix>;
  overrides = import (repo + "/tests/nix/specs/stub-overrides.nix");
  pkgs = import <nix-harness/lib/stub-pkgs.nix> {
    inherit (sources) lib;
    extraPkgs = overrides;
  };
  self = {
    nixosModules.nixfleet-agent = repo + "/modules/nixos.nix";
    packages.x86_64-linux.nixfleet-agent = pkgs.nixfleet-agent;
  };
  common = import (repo + "/nixos-tests/common.nix") { inherit pkgs self; };
  # what a NixOS host has and the harness only stubs loosely
  host =
    { pkgs, ... }:
    {
      networking.hostName = node;
      nix.package = pkgs.nix;
    };
  nodes = {
    server = [ common.server ];
    agent = [ (common.agent { nixosRebuildPackage = pkgs.nixos-rebuild; }) ];
  };
in
(import <nix-harness/lib/nixos.nix> { } {
  system = "x86_64-linux";
  extraPkgs = overrides;
  modules = nodes.${node} ++ [ host ];
}).checked
