# nix-darwin module for the NixFleet agent: the NixOS split, in launchd.
#
# Since nix-darwin 25.05 activation runs as root, so `darwin-rebuild switch` needs root. The
# agent itself does not: it talks to the network and runs git, so it runs as a launchd daemon
# under a dedicated hidden user (nix-darwin's service-user convention: `_nixfleet-agent`, a
# static uid/gid below 1000, users.knownUsers), with its state in a 0700 directory it owns.
#
# Switching goes through the same narrow channel as on NixOS: the agent writes
# <state>/privileged/request.json; the root daemon com.nixfleet.agent-privileged watches that
# path (launchd's WatchPaths, the equivalent of the NixOS path unit) and runs the same root code
# (nixfleet-agent-privileged: own clone, reachability from the branch, optional signatures,
# docs/root-boundary.md), which ends in `darwin-rebuild switch --flake git+file://...#<host>`
# and answers through files only the agent's uid can read.
#
# Surviving the switch. nix-darwin's activation unloads and reloads every daemon whose plist
# changed, and unloading a job kills it. The root daemon's plist therefore names no store path:
# it runs /etc/nixfleet-agent/privileged (an environment.etc link to the real script), so its
# plist never changes and a switch never kills the switch it runs. The agent's plist does name
# its package: a switch that changes it reloads the agent (which then reads the result root
# wrote meanwhile), and the agent also exits by itself when its plist changed (KeepAlive starts
# it again).
{
  config,
  lib,
  options,
  pkgs,
  ...
}:

let
  inherit (lib) literalExpression mkOption types;

  cfg = config.services.nixfleet-agent;

  shared = import ./options.nix {
    inherit lib pkgs;
    hostnameDefault = config.networking.hostName;
    hostnameDefaultText = literalExpression "config.networking.hostName";
  };

  configFile = shared.settingsFormat.generate "nixfleet-agent.toml" cfg.settings;

  agentLabel = "com.nixfleet.agent";
  privilegedLabel = "com.nixfleet.agent-privileged";
  watchdogLabel = "com.nixfleet.watchdog";

  stateDir = "/var/lib/nixfleet-agent";
  privilegedDir = "/var/lib/nixfleet-agent-privileged";
  requestFile = "${stateDir}/privileged/request.json";
  logDir = "/var/log/nixfleet-agent";
  # the stable path the root daemon's plist names (see the header)
  privilegedEntry = "/etc/nixfleet-agent/privileged";

  validAttr = shared.validHostname cfg.hostname;

  # launchd starts daemons with PATH=/usr/bin:/bin:/usr/sbin:/sbin. Apple's ssh stays in front
  # for the agent (it understands UseKeychain in an ssh config); the module's git is guaranteed.
  basePath = [
    "/run/current-system/sw/bin"
    "/nix/var/nix/profiles/default/bin"
  ];
  osPath = [
    "/usr/bin"
    "/bin"
    "/usr/sbin"
    "/sbin"
  ];
  agentPath = lib.concatStringsSep ":" (
    basePath
    ++ [
      (lib.makeBinPath [
        config.nix.package
        pkgs.git
      ])
    ]
    ++ osPath
  );

  # Home Manager users (home-manager's nix-darwin module) that also enable the agent: two agents
  # for one host. `options` tells whether that module is imported at all.
  hmUsers =
    if options ? home-manager && options.home-manager ? users then
      lib.attrNames (
        lib.filterAttrs (
          _: user: user.services.nixfleet-agent.enable or false
        ) config.home-manager.users
      )
    else
      [ ];

  privilegedScript = pkgs.writeShellScript "nixfleet-agent-privileged-start" ''
    # root's own known_hosts and git home, never the agent's
    export HOME=${privilegedDir}/root
    export PATH=${
      lib.concatStringsSep ":" (
        basePath
        ++ [
          (lib.makeBinPath (
            [
              config.nix.package
              pkgs.git
              pkgs.openssh # ssh-keygen checks SSH signatures
            ]
            ++ lib.optional (cfg.privileged.openpgpKeysFile != null) pkgs.gnupg
          ))
        ]
        ++ osPath
      )
    }
    umask 077
    exec ${
      lib.escapeShellArgs (
        [
          (lib.getExe' cfg.package "nixfleet-agent-privileged")
          "--config"
          "${configFile}"
          # /var is a symlink to private/var on macOS, and root walks the request's path from /
          # with O_NOFOLLOW at every step: it must be given the path without the symlink
          "--request"
          "/private${requestFile}"
          "--out-dir"
          "${privilegedDir}/results"
          "--state-dir"
          "${privilegedDir}/root"
          "--keep"
          (toString cfg.privileged.keepResults)
          "--darwin-rebuild"
          cfg.darwinRebuild
        ]
        # root reads the deploy key itself (it is root); the path is not a secret
        ++ lib.optionals (cfg.sshKeyFile != null) [
          "--ssh-key"
          (toString cfg.sshKeyFile)
        ]
        # "${...}" copies a path literal into the store: public keys, readable by anyone
        ++ lib.optionals (cfg.privileged.allowedSignersFile != null) [
          "--allowed-signers"
          "${cfg.privileged.allowedSignersFile}"
        ]
        ++ lib.optionals (cfg.privileged.openpgpKeysFile != null) [
          "--openpgp-keys"
          "${cfg.privileged.openpgpKeysFile}"
        ]
      )
    }
  '';
in
{
  options.services.nixfleet-agent = shared.options // {
    inherit (shared.nixosOptions) privileged;

    watchdog = shared.watchdogOptions;

    user = mkOption {
      type = types.str;
      default = "_nixfleet-agent";
      description = ''
        Hidden user the agent daemon runs as, created by the module (through
        {option}`users.knownUsers`) with {option}`services.nixfleet-agent.uid`. Its home is
        the state directory {file}`/var/lib/nixfleet-agent`. The token and deploy key files
        must be readable by this user (agenix: `owner = "_nixfleet-agent";`).
      '';
    };

    uid = mkOption {
      type = types.ints.positive;
      default = 536;
      description = ''
        User id of {option}`services.nixfleet-agent.user`. The default continues nix-darwin's
        range for service users (531-535 are taken by its own modules); change it if another
        account on the Mac already has it.
      '';
    };

    gid = mkOption {
      type = types.ints.positive;
      default = 536;
      description = "Group id of the agent's own group (named like {option}`services.nixfleet-agent.user`).";
    };

    darwinRebuild = mkOption {
      type = types.str;
      default = "/run/current-system/sw/bin/darwin-rebuild";
      example = literalExpression ''lib.getExe' pkgs.nix-darwin "darwin-rebuild"'';
      description = ''
        {command}`darwin-rebuild` the root daemon runs for switch and rollback requests. The
        default, the current system's own, keeps the root daemon's launchd definition the same
        across switches.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = shared.assertions cfg "services.nixfleet-agent" ++ [
      {
        assertion = cfg.configRepo == null;
        message = "services.nixfleet-agent.configRepo (deprecated) is not supported by the nix-darwin module: root builds only from a clone of its own; set services.nixfleet-agent.repoUrl instead.";
      }
      {
        assertion = !(cfg.settings ? repo_dir) && cfg.settings.state_dir == stateDir;
        message = "services.nixfleet-agent.settings.repo_dir and .state_dir cannot be set on nix-darwin: the root daemon watches the request file in the agent's state directory (${stateDir}); remove them.";
      }
      {
        assertion = validAttr;
        message = "services.nixfleet-agent.hostname must be ${shared.hostnameRule} (it names the darwinConfigurations output to build), got ${lib.generators.toPretty { } cfg.hostname}; set networking.hostName or services.nixfleet-agent.hostname.";
      }
      {
        assertion = cfg.watchdog.maxAge > cfg.interval;
        message = "services.nixfleet-agent.watchdog.maxAge (${toString cfg.watchdog.maxAge}) must exceed services.nixfleet-agent.interval (${toString cfg.interval}), or the watchdog restarts a healthy agent; use a few intervals.";
      }
      {
        assertion = cfg.user != "root" && cfg.user != config.system.primaryUser;
        message = "services.nixfleet-agent.user must be a dedicated service user (default \"_nixfleet-agent\"), not ${cfg.user}: the agent runs unprivileged and root trusts only its request file.";
      }
      {
        assertion = hmUsers == [ ];
        message = "services.nixfleet-agent is enabled both in nix-darwin and in Home Manager for ${lib.concatStringsSep ", " hmUsers}: that runs two agents for one host. Keep the nix-darwin module (it can switch the system as root) and remove services.nixfleet-agent from home-manager.users.${lib.head (hmUsers ++ [ "<user>" ])}.";
      }
    ];

    warnings = shared.warnings cfg "services.nixfleet-agent";

    services.nixfleet-agent.settings =
      shared.settingsFromOptions cfg
      // lib.mapAttrs (_: lib.mkDefault) (
        {
          platform = "darwin";
          state_dir = stateDir;
          # switches go through the root daemon, never through the agent's own children
          switch_launcher = "privileged";
          privileged_dir = "${privilegedDir}/results";
          # root's deadline for one request (root reads it from this file) and the agent's
          privileged_timeout = cfg.privileged.timeout;
          # launchd's KeepAlive starts the agent again after any exit
          restart_exit_code = 0;
        }
        // lib.optionalAttrs (cfg.tokenFile != null) { token_file = toString cfg.tokenFile; }
        // lib.optionalAttrs (cfg.sshKeyFile != null) { ssh_key_file = toString cfg.sshKeyFile; }
      )
      # guard-rails: the root daemon checks the store's free space before a switch
      // shared.preflightSettings cfg [ ]
      // shared.visibilitySettings cfg;

    users.users.${cfg.user} = {
      inherit (cfg) uid;
      gid = cfg.gid;
      description = "NixFleet agent";
      home = stateDir;
      createHome = false; # created below with mode 0700
      shell = "/usr/bin/false";
      isHidden = true;
    };
    users.groups.${cfg.user} = {
      inherit (cfg) gid;
      description = "NixFleet agent";
    };
    users.knownUsers = [ cfg.user ];
    users.knownGroups = [ cfg.user ];

    # Right after the users exist and before launchd loads the daemons (which create no
    # directories): the agent's state (its own, 0700), root's (0711: results reached by name),
    # and the logs.
    system.activationScripts.users.text = lib.mkAfter ''
      install -d -m 0700 -o ${toString cfg.uid} -g ${toString cfg.gid} ${stateDir}
      install -d -m 0711 -o root -g wheel ${privilegedDir}
      install -d -m 0755 -o root -g wheel ${logDir}
      for log in agent watchdog privileged; do
        touch ${logDir}/$log.log
        chmod 0600 ${logDir}/$log.log
      done
      chown ${toString cfg.uid}:${toString cfg.gid} ${logDir}/agent.log
    '';

    environment.etc."nixfleet-agent/privileged".source = privilegedScript;

    launchd.daemons.nixfleet-agent = {
      command = "${lib.getExe cfg.package} --config ${configFile}";
      serviceConfig = {
        Label = agentLabel;
        UserName = cfg.user;
        GroupName = cfg.user;
        RunAtLoad = true;
        KeepAlive = true;
        WorkingDirectory = stateDir;
        Umask = 63; # 0077
        # not "Background": launchd would throttle what the agent runs
        ProcessType = "Standard";
        # only PATH and HOME: the token and the key are files the agent reads itself
        EnvironmentVariables = {
          PATH = agentPath;
          HOME = stateDir;
        };
        StandardOutPath = "${logDir}/agent.log";
        StandardErrorPath = "${logDir}/agent.log";
      };
    };

    launchd.daemons.nixfleet-agent-privileged.serviceConfig = {
      Label = privilegedLabel;
      # a stable path, so that the plist is the same in every generation (see the header)
      ProgramArguments = [
        "/bin/sh"
        "-c"
        "/bin/wait4path /nix/store && exec ${privilegedEntry}"
      ];
      # the launchd equivalent of the NixOS path unit; RunAtLoad picks up a request written
      # while the daemon was not loaded. Each run consumes the request.
      WatchPaths = [ requestFile ];
      RunAtLoad = true;
      KeepAlive = false;
      # darwin-rebuild's children (nix, the activation) belong to the switch, not to this job
      AbandonProcessGroup = true;
      ProcessType = "Standard";
      StandardOutPath = "${logDir}/privileged.log";
      StandardErrorPath = "${logDir}/privileged.log";
    };

    launchd.daemons.nixfleet-agent-watchdog = lib.mkIf cfg.watchdog.enable {
      serviceConfig = {
        Label = watchdogLabel;
        ProgramArguments = [
          "/bin/sh"
          "${./watchdog.sh}"
          agentLabel
          "/Library/LaunchDaemons/${agentLabel}.plist"
          "${stateDir}/alive"
          (toString cfg.watchdog.maxAge)
          "system"
        ];
        StartInterval = 30;
        RunAtLoad = true;
        ProcessType = "Background";
        StandardOutPath = "${logDir}/watchdog.log";
        StandardErrorPath = "${logDir}/watchdog.log";
      };
    };
  };
}
