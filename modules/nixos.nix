# NixOS module for the NixFleet agent.
#
# Privilege separation. The agent talks to the network and runs git; it never needs root,
# so it runs as a DynamicUser: no account to manage, no uid that survives the service, no
# home, no sudo, NoNewPrivileges. A dedicated static user would only be needed if other
# services had to share files with the agent; nothing does, and DynamicUser additionally
# keeps the state in /var/lib/private (0700, root-owned), out of reach of other users.
#
# Switching a system does need root. The agent asks for it through a narrow channel: it
# writes <state>/privileged/request.json, the path unit nixfleet-agent-privileged.path sees
# the file and starts the root oneshot nixfleet-agent-privileged.service, which validates
# the request (allowlisted action, commit id, this host's flake attribute), fetches repoUrl
# into a clone of its own with its own copy of the deploy key, builds the commit only if it
# is on the branch as just fetched (and, with signers configured, signed by one of them),
# and reports through files only the agent's uid can read (contract: docs/root-boundary.md).
# A path unit was chosen over a polkit rule because it needs neither polkit on the host nor
# any IPC the agent could abuse: the only thing the agent can do is drop a small file that
# root parses strictly, and nothing the agent wrote decides what root builds.
#
# Neither unit is restarted or stopped by the switch it runs (restartIfChanged = false,
# X-StopOnRemoval = false, as nixos-upgrade.service). The agent restarts itself (exit 101,
# Restart=always) when a switch changed its package.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.nixfleet-agent;

  shared = import ./options.nix {
    inherit lib pkgs;
    hostnameDefault = config.networking.hostName;
    hostnameDefaultText = lib.literalExpression "config.networking.hostName";
  };

  configFile = shared.settingsFormat.generate "nixfleet-agent.toml" cfg.settings;

  legacy = cfg.configRepo != null;

  # With DynamicUser the state lives here and /var/lib/nixfleet-agent is a symlink to it;
  # the privileged side uses the real path so it never follows a link the agent controls.
  # In legacy mode the agent is a real user and its state is the plain directory.
  stateDir = if legacy then "/var/lib/nixfleet-agent" else "/var/lib/private/nixfleet-agent";
  privilegedDir = "/var/lib/nixfleet-agent-privileged";

  # Where the Prometheus text file goes (null: none); on NixOS under /run, see the assertion.
  metricsDir = cfg.metrics.textfileDirectory;

  # The flake attribute the privileged side accepts (and the dashboard's host id).
  validAttr = shared.validHostname cfg.hostname;

  # The EFI system partition the boot loader writes to (pre-flight checks its free space).
  efiMountPoint = config.boot.loader.efi.efiSysMountPoint or null;

  # The root program's command line: ExecStart= runs a request, ExecStopPost= (--finalize)
  # gives an accepted request the result its run left out.
  rootArgs = [
    (lib.getExe' cfg.package "nixfleet-agent-privileged")
    "--config ${configFile}"
    "--request ${stateDir}/privileged/request.json"
    "--out-dir ${privilegedDir}/results"
    "--state-dir ${privilegedDir}/root"
    "--keep ${toString cfg.privileged.keepResults}"
    "--nixos-rebuild ${lib.getExe cfg.nixosRebuildPackage}"
    "--systemctl ${lib.getExe' config.systemd.package "systemctl"}"
    "--nix-env ${lib.getExe' config.nix.package "nix-env"}"
  ]
  # "${...}" copies a path literal into the store: public keys, readable by anyone
  ++ lib.optional (
    cfg.privileged.allowedSignersFile != null
  ) "--allowed-signers ${cfg.privileged.allowedSignersFile}"
  ++ lib.optional (
    cfg.privileged.openpgpKeysFile != null
  ) "--openpgp-keys ${cfg.privileged.openpgpKeysFile}";
in
{
  options.services.nixfleet-agent = shared.options // shared.nixosOptions // {
    nixosRebuildPackage = lib.mkOption {
      type = lib.types.package;
      default = config.system.build.nixos-rebuild;
      defaultText = lib.literalExpression "config.system.build.nixos-rebuild";
      description = ''
        Package whose {command}`nixos-rebuild` the privileged unit runs for switch, boot,
        test and rollback requests (the same one {file}`nixos-upgrade.service` uses).
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = shared.assertions cfg "services.nixfleet-agent" ++ [
      {
        # the privileged unit builds from the clone at the path it knows, in the state directory
        assertion = !(cfg.settings ? repo_dir || cfg.settings ? state_dir);
        message = "services.nixfleet-agent.settings.repo_dir and .state_dir cannot be set on NixOS: the agent's clone lives in its state directory (/var/lib/nixfleet-agent); remove them.";
      }
      {
        assertion = legacy -> cfg.configRepoUser != null;
        message = "services.nixfleet-agent.configRepoUser must name the owner of configRepo ${toString cfg.configRepo} (the agent runs as that user to pull the checkout, e.g. \"alice\"); better, set services.nixfleet-agent.repoUrl instead of configRepo.";
      }
      {
        assertion = !legacy -> cfg.configRepoUser == null;
        message = "services.nixfleet-agent.configRepoUser only applies with configRepo; remove it (with repoUrl the agent runs as a dynamic user).";
      }
      {
        assertion = metricsDir == null || builtins.match "/run/[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*" metricsDir != null;
        message = "services.nixfleet-agent.metrics.textfileDirectory must be a directory under /run on NixOS (the agent runs as a dynamic user; systemd creates the directory for it), got ${toString metricsDir}; set it to e.g. \"/run/nixfleet-agent-metrics\" and pass --collector.textfile.directory=/run/nixfleet-agent-metrics to the node exporter.";
      }
      {
        assertion = validAttr;
        message = "services.nixfleet-agent.hostname must be ${shared.hostnameRule} (it names the flake output to build), got ${lib.generators.toPretty { } cfg.hostname}; set networking.hostName or services.nixfleet-agent.hostname.";
      }
    ];

    warnings = shared.warnings cfg "services.nixfleet-agent";

    services.nixfleet-agent.settings =
      shared.settingsFromOptions cfg
      // {
        # switches go through the root unit below, never through the agent's own children
        switch_launcher = "privileged";
        privileged_dir = "${privilegedDir}/results";
        # root's deadline for one request (read from this file by root) and the agent's, a bit later
        privileged_timeout = cfg.privileged.timeout;
      }
      # guard-rails: root checks /boot and the ESP (found below /boot at run time as well)
      // shared.preflightSettings cfg (
        lib.unique ([ "/boot" ] ++ lib.optional (efiMountPoint != null) efiMountPoint)
      )
      // shared.retentionSettings cfg
      // shared.visibilitySettings cfg
      # root reads [health] from this same file: the checks are the module's, never the agent's
      // shared.healthSettings cfg;

    systemd.services.nixfleet-agent = {
      description = "NixFleet agent";
      documentation = [ "https://github.com/nixfleet/nixfleet-agent" ];
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];

      # A switch started by the agent must not restart the agent in its middle; the agent
      # exits by itself (and is restarted) once a switch changed its package.
      restartIfChanged = false;

      # git and ssh for the clone, nix for `nix flake update`
      path = [
        pkgs.git
        pkgs.openssh
        config.nix.package
      ];

      environment = {
        # git, ssh and nix want a writable home; no secret ever goes here
        HOME = "/var/lib/nixfleet-agent";
      };

      serviceConfig = {
        Type = "simple";
        ExecStart = "${lib.getExe cfg.package} --config ${configFile}";
        Restart = "always";
        RestartSec = 10;

        DynamicUser = !legacy;
        StateDirectory = "nixfleet-agent";
        StateDirectoryMode = "0700";
        UMask = "0077";
        WorkingDirectory = "/var/lib/nixfleet-agent";

        # Secrets reach the agent only as credentials: copied by systemd into a private
        # ramfs (/run/credentials/nixfleet-agent.service), never into the store, the
        # environment or argv. The agent finds them at $CREDENTIALS_DIRECTORY/{token,ssh-key}.
        LoadCredential = [
          "token:${toString cfg.tokenFile}"
        ]
        ++ lib.optional (cfg.sshKeyFile != null) "ssh-key:${toString cfg.sshKeyFile}";

        # Hardening: everything a Python WebSocket client running git/ssh/nix tolerates.
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        NoNewPrivileges = true;
        PrivateTmp = true;
        PrivateDevices = true;
        PrivateUsers = true;
        PrivateMounts = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        # /proc/meminfo, /proc/stat and /proc/loadavg feed the heartbeat metrics, so
        # ProcSubset=pid is not possible; other processes stay invisible.
        ProtectProc = "invisible";
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        DevicePolicy = "closed";
        KeyringMode = "private";
        SystemCallArchitectures = "native";
        # not ~@resources: the nix, git and ssh children adjust their own rlimits
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        SystemCallErrorNumber = "EPERM";
      }
      // lib.optionalAttrs legacy {
        # The deprecated legacy checkout is another user's: run as that user (git refuses a
        # checkout of another owner, and a dynamic user could not write it), and of all homes
        # see only the checkout.
        User = cfg.configRepoUser;
        # RemoveIPC would remove the IPC objects of the user's own sessions when the agent stops
        RemoveIPC = false;
        ProtectHome = "tmpfs";
        BindPaths = [ cfg.configRepo ];
        ReadWritePaths = [ cfg.configRepo ];
      }
      // lib.optionalAttrs (metricsDir != null) {
        # The textfile directory: a dynamic user can write only what systemd makes for it;
        # 0755 lets node_exporter (another user) read the 0644 file. Removed with the unit.
        RuntimeDirectory = [ (lib.removePrefix "/run/" metricsDir) ];
        RuntimeDirectoryMode = "0755";
      };
    };

    systemd.paths.nixfleet-agent-privileged = {
      description = "NixFleet agent: watch for privileged switch requests";
      wantedBy = [ "paths.target" ];
      pathConfig = {
        PathExists = "${stateDir}/privileged/request.json";
        Unit = "nixfleet-agent-privileged.service";
      };
    };

    systemd.services.nixfleet-agent-privileged = {
      description = "NixFleet agent: run one privileged switch request";
      documentation = [ "https://github.com/nixfleet/nixfleet-agent" ];

      # Like nixos-upgrade.service: the switch this unit runs must not stop or restart it.
      restartIfChanged = false;
      unitConfig.X-StopOnRemoval = false;

      # systemd's default (5 starts in 10 s) fails a refused request and its immediate retry,
      # and a start-limit-hit unit makes the path unit stop watching until someone restarts it.
      # Each run consumes its request, so only the agent writing requests decides the rate; this
      # still stops a compromised agent from keeping root busy fetching without end.
      startLimitBurst = 30;
      startLimitIntervalSec = 60;

      path = [
        pkgs.coreutils
        pkgs.gnutar
        pkgs.xz
        pkgs.gzip
        pkgs.git
        pkgs.openssh # root fetches repoUrl itself; ssh-keygen checks SSH signatures
        config.nix.package
        config.systemd.package
      ]
      ++ lib.optional (cfg.privileged.openpgpKeysFile != null) pkgs.gnupg;

      environment = {
        # root's own known_hosts (accept-new) and git's home; never the agent's
        HOME = "${privilegedDir}/root";
      };

      serviceConfig = {
        Type = "oneshot";
        # What to fetch and build (repo_url or config_repo, branch, hostname, agent_input,
        # known_hosts_file, privileged_timeout) comes from the agent's TOML in the store, never
        # from the agent.
        ExecStart = lib.concatStringsSep " " rootArgs;
        # However the run ended (killed, crashed, failed early): a request root accepted gets a
        # result.json naming $SERVICE_RESULT/$EXIT_CODE/$EXIT_STATUS if the run left none.
        ExecStopPost = lib.concatStringsSep " " (rootArgs ++ [ "--finalize" ]);
        # systemd's own backstop behind root's deadline (which ends the rebuild itself first)
        TimeoutStartSec = cfg.privileged.timeout + 300;
        # --finalize may have to go back to the previous generation (root stopped during a
        # health-gated switch's grace period): an activation, not just a file write
        TimeoutStopSec = 900;
        # results/ and its request directories are 0711: the agent reaches the files meant
        # for it (0600, its uid) by name; nobody can list them; root/ (clone, state) is 0700
        StateDirectory = "nixfleet-agent-privileged";
        StateDirectoryMode = "0711";
        UMask = "0077";
        # root's own copy of the deploy key, for fetching repoUrl itself
        LoadCredential = lib.optional (cfg.sshKeyFile != null) "ssh-key:${toString cfg.sshKeyFile}";
      };
    };
  };
}
