# hosts/web1.nix
{ config, ... }:
{
  imports = [ ./web1-hardware.nix ]; # from nixos-generate-config

  networking.hostName = "web1"; # also the flake output the agent builds: nixosConfigurations.web1
  system.stateVersion = "25.11";

  # agenix decrypts these at activation to /run/agenix/<name>, readable by root only;
  # systemd hands them to the agent as credentials
  age.secrets.nixfleet-token.file = ../secrets/nixfleet-token.age;
  age.secrets.nixfleet-deploy-key.file = ../secrets/nixfleet-deploy-key.age;

  services.nixfleet-agent = {
    enable = true;
    url = "wss://fleet.example.com/ws";
    tokenFile = config.age.secrets.nixfleet-token.path;
    repoUrl = "git@github.com:example/nixcfg.git";
    sshKeyFile = config.age.secrets.nixfleet-deploy-key.path;
    location = "cloud";
    deviceType = "server";
  };
}
