# hosts/laptop.nix (Home Manager)
{ config, ... }:
{
  home.username = "alice";
  home.homeDirectory = "/Users/alice";
  home.stateVersion = "25.11";

  # the agent runs `home-manager switch`, found in the profile
  programs.home-manager.enable = true;

  services.nixfleet-agent = {
    enable = true;
    url = "wss://fleet.example.com/ws";
    # a file only alice can read (chmod 600), outside the Nix store
    tokenFile = "${config.home.homeDirectory}/.config/nixfleet/token";
    repoUrl = "git@github.com:example/nixcfg.git";
    sshKeyFile = "${config.home.homeDirectory}/.ssh/nixfleet_deploy";
    hostname = "laptop"; # the flake output it builds: homeConfigurations.laptop
    nixpkgsVersion = "25.11"; # macOS has no /run/current-system/nixos-version
  };
}
