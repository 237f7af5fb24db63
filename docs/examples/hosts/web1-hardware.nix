# hosts/web1-hardware.nix: a stand-in for what nixos-generate-config writes
{
  boot.loader.grub.device = "/dev/sda";
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
}
