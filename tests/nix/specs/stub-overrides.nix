# The project's package, called (never built) with the harness' stub pkgs, plus the Python
# packages it takes that the stub set lacks. (`prev` is the final set here, so the stub
# python set is extended under another name to avoid recursion.)
#
# lib.fileset needs builtins.readFileType (Nix >= 2.14); with the harness' Nix 2.8 the
# source is the repository itself. The real fileset is evaluated by `nix flake check`.
#
# The stub `formats.toml` type names `path` inside `with lib.types`, where the stub's own
# `path` argument shadows lib.types.path, so any value fails to merge; a fresh copy with a
# working value type is used instead (rendering stays JSON, which the tests read).
final: prev:
let
  stubFormats = (import <nix-harness/lib/stub-pkgs.nix> { inherit (final) lib; }).formats;
  tomlValue =
    with final.lib.types;
    nullOr (oneOf [
      bool
      int
      float
      str
      (attrsOf tomlValue)
      (listOf tomlValue)
    ])
    // {
      description = "TOML value (harness approximation)";
    };
in
{
  formats = stubFormats // {
    toml = args: {
      type = final.lib.types.attrsOf tomlValue;
      inherit ((stubFormats.toml args)) generate;
    };
  };

  nixfleet-agent = final.callPackage ../../../packages/nixfleet-agent/package.nix {
    lib = final.lib // {
      fileset = {
        toSource = { root, fileset }: root;
        unions = paths: paths;
        maybeMissing = path: path;
      };
    };
    python3Packages = final.python3.pkgs // {
      pythonOlder = _: false;
    };
    sourceCommit = "0123456789abcdef0123456789abcdef01234567";
  };
}
