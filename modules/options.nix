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
  # The one host-name rule (the agent's config.HOSTNAME_RE and the root side's request check are the
  # same regex): it names the flake output to build, so no leading dot, no "..", no separators.
  hostnameRegex = "[A-Za-z0-9_-][A-Za-z0-9._-]{0,62}";
in
{
  inherit settingsFormat hostnameRegex;

  validHostname = name: name != null && builtins.match hostnameRegex name != null;
  hostnameRule = "1-63 characters of A-Z a-z 0-9 . _ -, not starting with .";

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

    # Switch-time guard-rails (docs/guard-rails.md), rendered into the `[preflight]` table.
    preflight = {
      enable = lib.mkEnableOption "" // {
        default = true;
        description = ''
          Whether to check free space before every switch. A switch is refused, with the path,
          its free bytes and the bytes required as the command's error, when {file}`/boot` (and
          an EFI system partition mounted below it or at
          {option}`boot.loader.efi.efiSysMountPoint`) or the filesystem of the Nix store has less
          free space than the thresholds below. On NixOS and nix-darwin the root side checks; with
          Home Manager the agent checks the store itself.
        '';
      };

      bootMinFree = mkOption {
        type = types.ints.unsigned;
        default = 64 * 1024 * 1024;
        defaultText = literalExpression "64 * 1024 * 1024";
        example = literalExpression "256 * 1024 * 1024";
        description = ''
          Bytes that must be free on {file}`/boot` and the EFI system partition at least, also
          when the running kernel and initrd cannot be measured.
        '';
      };

      bootKernelFactor = mkOption {
        type = types.ints.between 0 100;
        default = 2;
        example = 4;
        description = ''
          Free space on {file}`/boot` must also hold this many copies of the running system's
          kernel plus initrd (the sizes of {file}`/run/current-system/kernel` and
          {file}`/run/current-system/initrd`): a switch to a new kernel copies the new pair there
          before an old one is removed. `0` leaves only
          {option}`services.nixfleet-agent.preflight.bootMinFree`.
        '';
      };

      storeMinFree = mkOption {
        type = types.ints.unsigned;
        default = 1024 * 1024 * 1024;
        defaultText = literalExpression "1024 * 1024 * 1024";
        example = literalExpression "10 * 1024 * 1024 * 1024";
        description = ''
          Bytes that must be free on the filesystem of the Nix store before a switch builds
          anything. Raise it for fleets whose updates download large closures.
        '';
      };

      switchInhibitors = mkOption {
        type = types.bool;
        default = true;
        description = ''
          NixOS only: before a switch, build the new system and compare its
          `system.switch.inhibitors` with the running system's, as
          {command}`switch-to-configuration` does. When one changed (say the D-Bus
          implementation), run {command}`nixos-rebuild boot` instead of failing the switch: the
          new configuration becomes the boot default, takes effect at the next reboot, and the
          command's final status says so. Independent of
          {option}`services.nixfleet-agent.preflight.enable`.
        '';
      };
    };
    reboot = {
      allow = mkOption {
        type = types.bool;
        default = false;
        example = true;
        description = ''
          Whether the agent may reboot the host by itself when a reboot is needed: the booted
          kernel, initrd or kernel modules differ from those of the running configuration (the
          rule of {option}`system.autoUpgrade.allowReboot`), or a `boot` generation waits. It
          reboots only inside {option}`reboot.window`, after {option}`reboot.randomizedDelaySec`,
          never while a command runs, and announces it on the dashboard first. On NixOS the
          reboot goes through the root unit; Home Manager hosts never need one.
        '';
      };

      window = mkOption {
        type = types.nullOr (
          types.submodule {
            options = {
              lower = mkOption {
                type = types.strMatching "([01]?[0-9]|2[0-3]):[0-5][0-9]";
                example = "01:00";
                description = "Start of the reboot window, local time (`HH:MM`).";
              };
              upper = mkOption {
                type = types.strMatching "([01]?[0-9]|2[0-3]):[0-5][0-9]";
                example = "05:00";
                description = ''
                  End of the reboot window, local time (`HH:MM`). Earlier than {option}`lower`
                  spans midnight; equal to it means the whole day.
                '';
              };
            };
          }
        );
        default = null;
        example = literalExpression ''
          {
            lower = "23:30";
            upper = "04:00";
          }
        '';
        description = ''
          Local-time window in which an automatic reboot may happen; `null` allows any time.
        '';
      };

      randomizedDelaySec = mkOption {
        type = types.ints.between 0 86400;
        default = 0;
        example = 1800;
        description = ''
          Upper bound, in seconds, of a random delay after the window opens (or the need
          arises inside it), so a fleet does not reboot all at once. The delay never reaches
          past the end of the window.
        '';
      };
    };

    metrics = {
      textfileDirectory = mkOption {
        type = types.nullOr (types.strMatching "/.+");
        default = null;
        example = "/run/nixfleet-agent-metrics";
        description = ''
          Directory in which the agent keeps {file}`nixfleet_agent.prom` (replaced atomically
          when a value changes, mode 0644) for the Prometheus node exporter's textfile
          collector: point {option}`services.prometheus.exporters.node` at it with
          `--collector.textfile.directory`. `null` writes no file. On NixOS the agent runs as a
          dynamic user and can write only a directory systemd creates for it, so there it
          must lie under {file}`/run` (made the unit's `RuntimeDirectory`, removed with the
          unit, so node_exporter never serves numbers of a stopped agent).
        '';
      };
    };

    health = {
      enable = mkOption {
        type = types.bool;
        default = true;
        example = false;
        description = ''
          Whether to check the host after every switch and, when a check fails within
          {option}`health.gracePeriod`, go back to the previous generation by itself (see
          {option}`health.onFailure`) and refuse that commit from then on, until a newer commit
          arrives or a `force-rebuild` asks for it. On NixOS root decides alone, so a switch that
          breaks the network or the agent is rolled back too.
        '';
      };

      gracePeriod = mkOption {
        type = types.ints.between 5 3600;
        default = 120;
        description = ''
          Seconds after activation within which every check must pass (twice in a row, 2 s
          apart) and, with {option}`health.requireReconnect`, the agent must have registered
          with the dashboard again.
        '';
      };

      units = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [
          "nginx.service"
          "postgresql.service"
        ];
        description = ''
          Units that must be active after the switch (`systemctl is-active`; user units of the
          Home Manager user's manager in the Home Manager module).
        '';
      };

      noFailedUnits = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Whether a unit in the failed state after the switch fails the check
          (`systemctl list-units --failed`). Units that had already failed before the switch
          are not counted.
        '';
      };

      ignoreFailedUnits = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "flaky-backup.service" ];
        description = "Failed units that do not count for {option}`health.noFailedUnits`.";
      };

      http = mkOption {
        type = types.listOf (
          types.submodule {
            options = {
              url = mkOption {
                type = types.strMatching "https?://.+";
                example = "http://127.0.0.1:8080/healthz";
                description = "URL requested with GET; redirects are not followed.";
              };
              status = mkOption {
                type = types.ints.between 100 599;
                default = 200;
                description = "The HTTP status that counts as healthy.";
              };
            };
          }
        );
        default = [ ];
        example = literalExpression ''[ { url = "http://127.0.0.1:8080/healthz"; } ]'';
        description = ''
          HTTP checks. Only loopback hosts unless {option}`health.allowRemote` is set: a check
          against another machine would roll back every host when that machine is down.
        '';
      };

      tcp = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [
          "127.0.0.1:5432"
          "[::1]:22"
        ];
        description = "`host:port` addresses that must accept a TCP connection (loopback unless {option}`health.allowRemote`).";
      };

      commands = mkOption {
        type = types.listOf (
          types.submodule {
            options = {
              argv = mkOption {
                type = types.nonEmptyListOf types.str;
                example = literalExpression ''[ (lib.getExe pkgs.curl) "-fsS" "http://127.0.0.1/" ]'';
                description = "Program (an absolute path) and arguments; exit status 0 means healthy.";
              };
              user = mkOption {
                type = types.nullOr types.str;
                default = null;
                example = "nobody";
                description = ''
                  User the command runs as; `null` runs it as whoever runs the checks (root on
                  NixOS, the Home Manager user in the Home Manager module, which cannot run it as
                  anybody else).
                '';
              };
            };
          }
        );
        default = [ ];
        example = literalExpression ''[ { argv = [ "''${pkgs.postgresql}/bin/pg_isready" ]; user = "postgres"; } ]'';
        description = "Commands run after activation, each with a 10 s limit per attempt.";
      };

      requireReconnect = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Whether the agent of the new generation must register with the dashboard again within
          {option}`health.gracePeriod`; if it does not (a wrong URL, a broken network or a
          broken agent), the switch counts as failed.
        '';
      };

      onFailure = mkOption {
        type = types.enum [
          "rollback"
          "report"
        ];
        default = "rollback";
        description = ''
          `rollback`: activate the previous generation again and refuse the commit from then
          on; `report`: stay on the new generation and only report the failure.
        '';
      };

      allowRemote = mkOption {
        type = types.bool;
        default = false;
        description = "Whether {option}`health.http` and {option}`health.tcp` may name other hosts than loopback.";
      };
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

    # Generation retention after a successful switch (docs/guard-rails.md), rendered into `[retention]`.
    retention = {
      keepGenerations = mkOption {
        type = types.nullOr (types.ints.between 1 10000);
        default = null;
        example = 10;
        description = ''
          Number of system generations to keep. After every successful switch the privileged unit
          deletes older ones ({command}`nix-env --profile /nix/var/nix/profiles/system
          --delete-generations +N`, which also keeps any newer than the current one) and rewrites
          the boot entries ({command}`switch-to-configuration boot` of the system profile). `null`
          keeps every generation.
        '';
      };

      gc.enable = lib.mkEnableOption ''
        garbage collection ({command}`nix-store --gc`) by the privileged unit after every
        successful switch (after {option}`services.nixfleet-agent.retention.keepGenerations`
        removed old generations)
      '';
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

  # The `[preflight]` table (guard/settings.py reads it); `bootPaths`: where the module's platform
  # keeps its kernels (none on nix-darwin and Home Manager).
  preflightSettings = cfg: bootPaths: {
    preflight = lib.mapAttrs (_: lib.mkDefault) {
      inherit (cfg.preflight) enable;
      boot_paths = bootPaths;
      store_path = builtins.storeDir;
      boot_min_free = cfg.preflight.bootMinFree;
      boot_kernel_factor = cfg.preflight.bootKernelFactor;
      store_min_free = cfg.preflight.storeMinFree;
      switch_inhibitors = cfg.preflight.switchInhibitors;
    };
  };

  # The `[retention]` table (NixOS), left out while nothing is to be removed.
  retentionSettings =
    cfg:
    lib.optionalAttrs (cfg.retention.keepGenerations != null || cfg.retention.gc.enable) {
      retention = lib.mapAttrs (_: lib.mkDefault) (
        {
          gc = cfg.retention.gc.enable;
        }
        // lib.optionalAttrs (cfg.retention.keepGenerations != null) {
          keep_generations = cfg.retention.keepGenerations;
        }
      );
    };

  # The `reboot` and `metrics` options as the agent's `[reboot]` and `[metrics]` TOML tables
  # (only what differs from the agent's defaults, so existing configurations render unchanged).
  visibilitySettings =
    cfg:
    lib.optionalAttrs cfg.reboot.allow {
      reboot = lib.mapAttrs (_: lib.mkDefault) (
        {
          allow = true;
          randomized_delay_sec = cfg.reboot.randomizedDelaySec;
        }
        // lib.optionalAttrs (cfg.reboot.window != null) {
          window = { inherit (cfg.reboot.window) lower upper; };
        }
      );
    }
    // lib.optionalAttrs (cfg.metrics.textfileDirectory != null) {
      metrics.textfile_directory = lib.mkDefault cfg.metrics.textfileDirectory;
    };

  # The [health] TOML table from services.nixfleet-agent.health (NixOS and Home Manager).
  # Each key a default of its own, so `settings.health.<key>` overrides just that key.
  healthSettings = cfg: {
    health = lib.mapAttrs (_: lib.mkDefault) {
      inherit (cfg.health) enable units tcp;
      grace_period = cfg.health.gracePeriod;
      no_failed_units = cfg.health.noFailedUnits;
      ignore_failed_units = cfg.health.ignoreFailedUnits;
      http = map (check: { inherit (check) url status; }) cfg.health.http;
      commands = map (
        check: { inherit (check) argv; } // lib.optionalAttrs (check.user != null) { inherit (check) user; }
      ) cfg.health.commands;
      require_reconnect = cfg.health.requireReconnect;
      on_failure = cfg.health.onFailure;
      allow_remote = cfg.health.allowRemote;
    };
  };

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
