# Options shared by the NixOS and the Home Manager module, and the mapping from those
# options to the agent's TOML keys (docs/architecture.md, "Configuration keys"). Both
# modules render exactly one TOML file from `settings`; the typed options below only fill
# `settings` with `mkDefault`, so anything set in `settings` wins.
{
  lib,
  pkgs,
  # how the default `hostname` is described in the manual, and its default value
  hostnameDefault,
  hostnameDefaultText,
}:

let
  inherit (lib) literalExpression mkOption types;

  settingsFormat = pkgs.formats.toml { };
in
{
  inherit settingsFormat;

  options = {
    enable = lib.mkEnableOption "the NixFleet agent, connecting this host to a NixFleet dashboard";

    package = lib.mkPackageOption pkgs "nixfleet-agent" { };

    url = mkOption {
      type = types.nullOr (types.strMatching "wss?://.+");
      default = null;
      example = "wss://fleet.example.com/ws";
      description = "WebSocket URL of the NixFleet dashboard (`ws://` or `wss://`).";
    };

    tokenFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/agenix/nixfleet-token";
      description = ''
        File holding the agent token, either the bare token or a `NIXFLEET_TOKEN=...` line.
        It must not be in the Nix store (the store is world-readable): use a secret manager
        such as agenix or sops-nix, whose decrypted files live under {file}`/run`.
      '';
    };

    repoUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "git@github.com:example/nixcfg.git";
      description = ''
        Git URL of the fleet configuration. The agent keeps its own clone of it in its state
        directory and builds from that clone.
      '';
    };

    branch = mkOption {
      type = types.str;
      default = "main";
      example = "production";
      description = "Branch of {option}`repoUrl` the agent follows.";
    };

    sshKeyFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/agenix/nixfleet-deploy-key";
      description = ''
        Private SSH key (a deploy key) for cloning {option}`repoUrl` over SSH. Like
        {option}`tokenFile` it must not be in the Nix store.
      '';
    };

    configRepo = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/home/alice/nixcfg";
      description = ''
        Deprecated: path of an existing checkout the agent pulls and builds from (the old
        "legacy" mode). Use {option}`repoUrl` instead, which gives the agent a clone that
        nobody else edits.
      '';
    };

    hostname = mkOption {
      type = types.nullOr types.str;
      default = hostnameDefault;
      defaultText = hostnameDefaultText;
      example = "web1";
      description = ''
        Name this host reports to the dashboard; also the flake output the agent builds
        (`nixosConfigurations.<hostname>` and the like).
      '';
    };

    interval = mkOption {
      type = types.ints.between 1 3600;
      default = 5;
      example = 30;
      description = "Seconds between heartbeats.";
    };

    logLevel = mkOption {
      type = types.enum [
        "debug"
        "info"
        "warn"
        "error"
      ];
      default = "info";
      description = "Lowest level the agent logs.";
    };

    location = mkOption {
      type = types.enum [
        "home"
        "work"
        "cloud"
      ];
      default = "home";
      description = "Where the host lives, as shown by the dashboard.";
    };

    deviceType = mkOption {
      type = types.enum [
        "server"
        "desktop"
        "laptop"
        "gaming"
      ];
      default = "desktop";
      description = "Kind of device, as shown by the dashboard.";
    };

    themeColor = mkOption {
      type = types.nullOr (types.strMatching "#[0-9a-fA-F]{6}");
      default = null;
      example = "#7aa2f7";
      description = "Colour of the host in the dashboard; `null` lets the dashboard choose.";
    };

    agentInput = mkOption {
      # what the agent accepts as a flake input name (a Nix identifier)
      type = types.strMatching "[A-Za-z_][A-Za-z0-9_'-]*";
      default = "nixfleet-agent";
      example = "nixfleet";
      description = ''
        Name your fleet flake gives this flake in its `inputs` (the README calls it
        `nixfleet-agent`). `bump-flake` and `force-update` move only this input of the
        fleet's {file}`flake.lock`; a lock without it is an error naming this option.
        Fleets that came from the upstream agent, whose input was called `nixfleet`,
        set `"nixfleet"`.
      '';
    };

    nixpkgsVersion = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "25.11";
      description = ''
        Value reported as `nixpkgs_version`. `null` lets the agent read
        {file}`/run/current-system/nixos-version` where it exists.
      '';
    };

    settings = mkOption {
      type = types.submodule { freeformType = settingsFormat.type; };
      default = { };
      example = literalExpression ''
        {
          ping_timeout = 60;
          git_timeout = 900;
        }
      '';
      description = ''
        Agent configuration written to its TOML file, keyed by the agent's TOML keys (see the
        README). The options above fill in their keys; values set here take precedence. Never
        put the token here: the file is in the Nix store.
      '';
    };
  };

  # NixOS and nix-darwin: the root side of the privileged switch channel; NixOS only: who runs
  # the agent in the deprecated legacy mode. (Home Manager has no root side.)
  nixosOptions = {
    configRepoUser = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "alice";
      description = ''
        Owner of the deprecated {option}`configRepo` checkout; required with it. The agent runs
        as this user (not as a dynamic user) so that it can pull the checkout, and the
        privileged unit builds the checkout's commits: in this mode root trusts this user, and
        anything that runs as this user, as much as itself.
      '';
    };

    privileged = {
      allowedSignersFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = literalExpression "./allowed_signers";
        description = ''
          SSH allowed-signers file (git's `gpg.ssh.allowedSignersFile` format:
          `<principal> <key type> <public key>` per line). When set, or
          {option}`privileged.openpgpKeysFile` is, the privileged unit builds only commits whose
          signature verifies against these signers, and refuses a commit older than the last one
          it deployed (the `rollback` command goes back without building).
        '';
      };

      openpgpKeysFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = literalExpression "./fleet-signers.asc";
        description = ''
          File of ASCII-armoured OpenPGP public keys whose commit signatures the privileged unit
          accepts (see {option}`privileged.allowedSignersFile`).
        '';
      };

      keepResults = mkOption {
        type = types.ints.between 1 1000;
        default = 20;
        description = "Number of per-request result directories (build logs) the privileged unit keeps.";
      };

      timeout = mkOption {
        type = types.ints.between 60 604800;
        default = 7200;
        example = 14400;
        description = ''
          Seconds one privileged request (a switch: fetch, checks, `nixos-rebuild`) may take. At
          this deadline root ends the rebuild's process group (SIGTERM, then SIGKILL) and answers
          with an error saying so; the agent stops waiting 300 s later even if root never
          answers. Rendered into the agent's TOML as `privileged_timeout`, which root reads from
          that root-owned file, never from the agent's request.
        '';
      };
    };
  };

  # macOS only (Home Manager's launchd agent and the nix-darwin daemon): the liveness watchdog.
  watchdogOptions = {
    enable = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Whether to run the macOS watchdog, a launchd job that every 30 s loads the agent if
        it is not loaded, starts it if it is not running, and restarts it if it stopped
        touching its liveness file. No effect on Linux, where systemd restarts the service.
      '';
    };

    maxAge = mkOption {
      type = types.ints.positive;
      default = 120;
      description = ''
        Seconds after which a running agent whose liveness file ({file}`alive` in its state
        directory, touched at every heartbeat) was not touched counts as hung and is
        restarted. Keep it several times {option}`services.nixfleet-agent.interval`.
      '';
    };
  };

  # TOML keys from the typed options; null means "let the agent decide" and is left out.
  settingsFromOptions =
    cfg:
    lib.mapAttrs (_: lib.mkDefault) (
      lib.filterAttrs (_: value: value != null) {
        inherit (cfg) url branch interval hostname location;
        repo_url = cfg.repoUrl;
        config_repo = cfg.configRepo;
        log_level = cfg.logLevel;
        device_type = cfg.deviceType;
        theme_color = cfg.themeColor;
        nixpkgs_version = cfg.nixpkgsVersion;
        agent_input = cfg.agentInput;
      }
    );

  # Assertions both modules share; `prefix` is the option path shown in messages.
  assertions =
    cfg: prefix:
    let
      outsideStore = path: path == null || !lib.hasPrefix builtins.storeDir (toString path);
      inStoreMessage =
        name: path: example:
        "${prefix}.${name} is inside the Nix store (${toString path}), where every user can "
        + "read it; give the path of a runtime secret as a string, e.g. ${example}.";
    in
    [
      {
        assertion = cfg.url != null;
        message = "${prefix}.url must be set to the dashboard's WebSocket URL, e.g. \"wss://fleet.example.com/ws\".";
      }
      {
        assertion = cfg.tokenFile != null;
        message = "${prefix}.tokenFile must be set to a file holding the agent token (an agenix or sops-nix secret).";
      }
      {
        assertion = (cfg.repoUrl == null) != (cfg.configRepo == null);
        message =
          if cfg.repoUrl == null then
            "${prefix}: set ${prefix}.repoUrl to the Git URL of your fleet configuration."
          else
            "${prefix}: set only one of ${prefix}.repoUrl and ${prefix}.configRepo (deprecated); remove configRepo.";
      }
      {
        assertion = !(cfg.settings ? token);
        message = "${prefix}.settings.token would put the token into the world-readable Nix store; remove it and set ${prefix}.tokenFile instead.";
      }
      {
        assertion = outsideStore cfg.tokenFile;
        message = inStoreMessage "tokenFile" cfg.tokenFile "config.age.secrets.nixfleet-token.path";
      }
      {
        assertion = outsideStore cfg.sshKeyFile;
        message = inStoreMessage "sshKeyFile" cfg.sshKeyFile "config.sops.secrets.deploy-key.path";
      }
    ];

  warnings =
    cfg: prefix:
    lib.optional (cfg.configRepo != null) (
      "${prefix}.configRepo is deprecated: the agent pulls into a checkout other people may edit. "
      + "Set ${prefix}.repoUrl (and ${prefix}.sshKeyFile for a private repository) so the agent "
      + "keeps a clone of its own."
    );
}
