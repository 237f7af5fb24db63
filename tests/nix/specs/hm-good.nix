# A complete, valid Home Manager configuration of the agent (macOS or Linux).
{
  system ? "aarch64-darwin",
  settings ? {
    services.nixfleet-agent = {
      enable = true;
      url = "wss://fleet.example.com/ws";
      tokenFile = "/Users/alice/.config/nixfleet/token";
      repoUrl = "git@github.com:example/nixcfg.git";
      deviceType = "laptop";
    };
  },
}:
import <nix-harness/lib/hm.nix> { } {
  inherit system;
  username = "alice";
  homeDirectory = if builtins.match ".*-darwin" system != null then "/Users/alice" else "/home/alice";
  extraPkgs = import ./stub-overrides.nix;
  modules = [
    ../../../modules/home-manager.nix
    settings
  ];
}
