{
  description = "NixFleet agent: connects NixOS and macOS hosts to a NixFleet dashboard";

  # Consumers fetch nothing but nixpkgs. Home Manager and nix-darwin, needed only to check
  # the Home Manager module, are inputs of the sub-flake in ./checks.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];

      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # Reported by the agent as `source_commit` (dirtyRev: built from a modified checkout).
      sourceCommit = self.rev or self.dirtyRev or "unknown";

      packageFor =
        pkgs: pkgs.callPackage ./packages/nixfleet-agent/package.nix { inherit sourceCommit; };

      # The modules default to this flake's package for the host's platform; `package` can
      # still be set to anything else.
      # The key lets the module system deduplicate `nixfleet-agent` and `default` imported
      # together.
      withPackage =
        module:
        { lib, pkgs, ... }:
        let
          inherit (pkgs.stdenv.hostPlatform) system;
        in
        {
          key = "nixfleet-agent:${toString module}";
          imports = [ module ];
          services.nixfleet-agent.package = lib.mkDefault self.packages.${system}.nixfleet-agent;
        };
    in
    {
      packages = forAllSystems (
        pkgs:
        let
          nixfleet-agent = packageFor pkgs;
        in
        {
          inherit nixfleet-agent;
          default = nixfleet-agent;
        }
      );

      overlays.default = final: prev: { nixfleet-agent = packageFor final; };

      nixosModules = {
        nixfleet-agent = withPackage ./modules/nixos.nix;
        default = self.nixosModules.nixfleet-agent;
      };

      # nix-darwin hosts: the agent as a daemon of its own user, switches by a root daemon.
      darwinModules = {
        nixfleet-agent = withPackage ./modules/darwin.nix;
        default = self.darwinModules.nixfleet-agent;
      };

      # Home Manager's current name for module outputs; `homeManagerModules` is the older one,
      # kept as an alias of the very same modules (the key deduplicates any mix of the two).
      homeModules = {
        nixfleet-agent = withPackage ./modules/home-manager.nix;
        default = self.homeModules.nixfleet-agent;
      };
      homeManagerModules = self.homeModules;

      checks = forAllSystems (
        pkgs:
        let
          inherit (pkgs.stdenv.hostPlatform) system isLinux;

          # Evaluates the NixOS module in a real NixOS configuration and keeps the rendered
          # units, so a module change that breaks evaluation fails `nix flake check`.
          moduleEval = lib.nixosSystem {
            inherit system;
            modules = [
              self.nixosModules.nixfleet-agent
              {
                system.stateVersion = "25.11";
                boot.isContainer = true;
                networking.hostName = "check";
                services.nixfleet-agent = {
                  enable = true;
                  url = "wss://fleet.example.com/ws";
                  tokenFile = "/run/secrets/nixfleet-token";
                  repoUrl = "https://git.example.com/fleet.git";
                };
              }
            ];
          };
          units = moduleEval.config.systemd.units;
        in
        {
          nixfleet-agent = self.packages.${system}.nixfleet-agent;
        }
        // lib.optionalAttrs isLinux (
          {
            nixos-module = pkgs.runCommand "nixfleet-agent-nixos-module-units" { } ''
              mkdir -p $out
              cp ${units."nixfleet-agent.service".unit}/* $out/
              cp ${units."nixfleet-agent-privileged.service".unit}/* $out/
              cp ${units."nixfleet-agent-privileged.path".unit}/* $out/
            '';
          }
          // lib.optionalAttrs (builtins.pathExists ./nixos-tests/default.nix) (
            import ./nixos-tests { inherit pkgs self; }
          )
        )
      );

      formatter = forAllSystems (pkgs: pkgs.nixfmt);

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (ps: [
              ps.websocket-client
              ps.pytest
              ps.hypothesis
              ps.websockets
              ps.setuptools
              ps.pip
            ]))
            pkgs.git
            pkgs.openssh
            pkgs.nixfmt
            pkgs.shellcheck
          ];
        };
      });
    };
}
