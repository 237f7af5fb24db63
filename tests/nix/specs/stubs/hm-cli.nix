# Home Manager's own programs.home-manager module builds its CLI from nixpkgs files the harness
# does not have (nixos-option); this stand-in keeps the options, with a stub package.
{
  config,
  lib,
  pkgs,
  ...
}:
{
  disabledModules = [ "programs/home-manager.nix" ];
  options.programs.home-manager = {
    enable = lib.mkEnableOption "Home Manager (harness stand-in)";
    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.mkDrv {
        pname = "home-manager";
        version = "0";
        meta.mainProgram = "home-manager";
      };
      description = "The home-manager CLI (harness stand-in).";
    };
  };
  config = lib.mkIf config.programs.home-manager.enable {
    home.packages = [ config.programs.home-manager.package ];
  };
}
