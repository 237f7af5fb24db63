{
  description = "nixfleet-agent checks that need Home Manager or nix-darwin";

  # A separate flake so that consumers of the main flake never fetch Home Manager or
  # nix-darwin. Run from the repository root: `nix flake check ./checks` (inside the Git
  # checkout Nix reads it as git+file:…?dir=checks, whose source is the whole repository).
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    home-manager = {
      url = "github:nix-community/home-manager";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    nix-darwin = {
      url = "github:nix-darwin/nix-darwin";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      home-manager,
      nix-darwin,
    }:
    let
      inherit (nixpkgs) lib;

      # The main flake's outputs with this flake's nixpkgs (the same pin). Its `self` carries
      # the repository's revision (this flake's source is the whole repository) and the
      # check-only inputs, which enable the Home Manager VM test.
      main = (import ../flake.nix).outputs {
        self =
          main
          // lib.filterAttrs (name: _: name == "rev" || name == "dirtyRev") self
          // {
            inputs = { inherit nixpkgs home-manager nix-darwin; };
          };
        inherit nixpkgs;
      };

      agent = homeDirectory: {
        enable = true;
        url = "wss://fleet.example.com/ws";
        tokenFile = "${homeDirectory}/.config/nixfleet/token";
        repoUrl = "https://git.example.com/fleet.git";
      };

      homeModule = homeDirectory: {
        imports = [ main.homeModules.nixfleet-agent ];
        home.stateVersion = "25.11";
        services.nixfleet-agent = agent homeDirectory;
      };

      checksFor =
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
          inherit (pkgs.stdenv.hostPlatform) isDarwin;
          homeDirectory = if isDarwin then "/Users/alice" else "/home/alice";
        in
        main.checks.${system}
        // {
          home-manager-module =
            (home-manager.lib.homeManagerConfiguration {
              inherit pkgs;
              modules = [
                (homeModule homeDirectory)
                {
                  home.username = "alice";
                  home.homeDirectory = homeDirectory;
                }
              ];
            }).activationPackage;
        }
        // lib.optionalAttrs isDarwin {
          nix-darwin-module =
            (nix-darwin.lib.darwinSystem {
              modules = [
                home-manager.darwinModules.home-manager
                {
                  nixpkgs.hostPlatform = system;
                  system.stateVersion = 6;
                  system.primaryUser = "alice";
                  users.users.alice.home = homeDirectory;
                  home-manager.users.alice = homeModule homeDirectory;
                }
              ];
            }).system;
        };
    in
    {
      checks = lib.genAttrs (lib.attrNames main.packages) checksFor;
    };
}
