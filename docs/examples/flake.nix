# flake.nix of your fleet repository
{
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    home-manager = {
      url = "github:nix-community/home-manager";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    agenix = {
      url = "github:ryantm/agenix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    # this name is what bump-flake moves: services.nixfleet-agent.agentInput's default
    nixfleet-agent = {
      url = "github:nixfleet/nixfleet-agent";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      nixpkgs,
      home-manager,
      agenix,
      nixfleet-agent,
      ...
    }:
    {
      # a NixOS host: the agent builds nixosConfigurations.<its host name>
      nixosConfigurations.web1 = nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [
          agenix.nixosModules.default
          nixfleet-agent.nixosModules.default
          ./hosts/web1.nix
        ];
      };

      # a Mac with standalone Home Manager: the agent builds homeConfigurations.<its host name>
      homeConfigurations.laptop = home-manager.lib.homeManagerConfiguration {
        pkgs = nixpkgs.legacyPackages.aarch64-darwin;
        modules = [
          nixfleet-agent.homeModules.default
          ./hosts/laptop.nix
        ];
      };
    };
}
