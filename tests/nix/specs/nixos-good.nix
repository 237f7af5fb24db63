# A complete, valid NixOS configuration of the agent.
{
  settings ? {
    services.nixfleet-agent = {
      enable = true;
      url = "wss://fleet.example.com/ws";
      tokenFile = "/run/agenix/nixfleet-token";
      sshKeyFile = "/run/agenix/nixfleet-deploy-key";
      repoUrl = "git@github.com:example/nixcfg.git";
      location = "cloud";
      deviceType = "server";
      themeColor = "#7aa2f7";
    };
  },
}:
import <nix-harness/lib/nixos.nix> { } {
  system = "x86_64-linux";
  extraPkgs = import ./stub-overrides.nix;
  # gpg for the root unit when OpenPGP signers are configured
  extraNames = [ "gnupg" ];
  modules = [
    ../../../modules/nixos.nix
    ./nixos-host.nix
    settings
  ];
}
