# What a NixOS host provides that the harness only stubs loosely.
{ pkgs, ... }:
{
  networking.hostName = "web1";
  nix.package = pkgs.nix;
  # The harness' loose `system` merges all of `system` into one value, so reading
  # system.build.nixos-rebuild would force system.build.units, i.e. these very units.
  services.nixfleet-agent.nixosRebuildPackage = pkgs.nixos-rebuild;
}
