# Stand-in for agenix' NixOS module (github:ryantm/agenix): only the options the examples use,
# with agenix' default secret path, so a misspelt option still fails as "does not exist".
{ lib, ... }:
{
  options.age.secrets = lib.mkOption {
    default = { };
    type = lib.types.attrsOf (
      lib.types.submodule (
        { name, ... }:
        {
          options = {
            file = lib.mkOption {
              type = lib.types.path;
              description = "Age-encrypted file of the secret.";
            };
            path = lib.mkOption {
              type = lib.types.str;
              default = "/run/agenix/${name}";
              description = "Where the decrypted secret is at run time.";
            };
          };
        }
      )
    );
    description = "agenix secrets (harness stand-in).";
  };
}
