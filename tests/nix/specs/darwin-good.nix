# A complete, valid nix-darwin configuration of the agent, evaluated with nix-darwin's complete
# module set. `hmUsers` adds a stand-in for home-manager's nix-darwin module (its
# `home-manager.users.<name>` option, with the agent enabled for the names given), to check the
# two-agents assertion without evaluating Home Manager itself.
{
  settings ? {
    services.nixfleet-agent = {
      enable = true;
      url = "wss://fleet.example.com/ws";
      tokenFile = "/run/agenix/nixfleet-token";
      sshKeyFile = "/run/agenix/nixfleet-deploy-key";
      repoUrl = "git@github.com:example/nixcfg.git";
      deviceType = "laptop";
    };
  },
  hmUsers ? null,
}:
import <nix-harness/lib/darwin.nix> { } {
  primaryUser = "alice";
  extraPkgs = import ./stub-overrides.nix;
  modules = [
    ../../../modules/darwin.nix
    { networking.hostName = "mac1"; }
    settings
  ]
  ++ (
    if hmUsers == null then
      [ ]
    else
      [
        (
          { lib, ... }:
          {
            options.home-manager.users = lib.mkOption {
              type = lib.types.attrsOf (
                lib.types.submodule {
                  options.services.nixfleet-agent.enable = lib.mkEnableOption "the agent";
                }
              );
              default = { };
            };
            config.home-manager.users = lib.genAttrs hmUsers (_: {
              services.nixfleet-agent.enable = true;
            });
          }
        )
      ]
  );
}
