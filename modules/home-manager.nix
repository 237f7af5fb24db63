# Home Manager module for the NixFleet agent: a launchd agent plus a watchdog on macOS, a
# systemd user service on Linux. Both run the package's executable with one TOML file from
# the store; the token and the SSH key are never in it, nor in the plist or the
# environment: the agent reads tokenFile / sshKeyFile itself at start.
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
    # the agent detects it (scutil LocalHostName on macOS, the short hostname elsewhere)
    hostnameDefault = null;
    hostnameDefaultText = lib.literalMD "detected by the agent at start";
  };

  configFile = shared.settingsFormat.generate "nixfleet-agent.toml" cfg.settings;

  isDarwin = pkgs.stdenv.hostPlatform.isDarwin;
  agentLabel = "com.nixfleet.agent";
  watchdogLabel = "com.nixfleet.watchdog";
  homeDir = config.home.homeDirectory;
  logDir = "${homeDir}/Library/Logs/nixfleet-agent";
  stateDir = "${config.xdg.stateHome}/nixfleet-agent";

  # launchd and the systemd user manager start jobs with a bare PATH (the user manager's
  # default has no Nix profile at all), yet the agent runs git, ssh, nix and home-manager
  # (or darwin-rebuild; home-manager is in the profile with programs.home-manager.enable).
  # One PATH for both: the user's and the system's Nix profiles first, as a login shell
  # has them on NixOS, nix-darwin and a Nix install on another distribution; then what
  # this module guarantees itself; then the OS. On macOS ssh stays Apple's /usr/bin/ssh,
  # which understands ~/.ssh/config options such as UseKeychain.
  agentPath = lib.concatStringsSep ":" (
    lib.unique [
      "${config.home.profileDirectory}/bin"
      "${homeDir}/.nix-profile/bin"
      "/etc/profiles/per-user/${config.home.username}/bin"
    ]
    ++ lib.optional (!isDarwin) "/run/wrappers/bin"
    ++ [
      "/run/current-system/sw/bin"
      "/nix/var/nix/profiles/default/bin"
      (lib.makeBinPath (
        lib.optional (config.nix.package != null) config.nix.package
        ++ [ pkgs.git ]
        ++ lib.optional (!isDarwin) pkgs.openssh
      ))
      "/usr/local/bin"
      "/usr/bin"
      "/bin"
      "/usr/sbin"
      "/sbin"
    ]
  );
in
{
  options.services.nixfleet-agent = shared.options // {
    watchdog = shared.watchdogOptions;
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = shared.assertions cfg "services.nixfleet-agent" ++ [
          {
            assertion = cfg.watchdog.maxAge > cfg.interval;
            message = "services.nixfleet-agent.watchdog.maxAge (${toString cfg.watchdog.maxAge}) must exceed services.nixfleet-agent.interval (${toString cfg.interval}), or the watchdog restarts a healthy agent; use a few intervals.";
          }
        ];

        warnings = shared.warnings cfg "services.nixfleet-agent";

        services.nixfleet-agent.settings =
          shared.settingsFromOptions cfg
          // lib.mapAttrs (_: lib.mkDefault) (
            {
              state_dir = stateDir;
            }
            // lib.optionalAttrs (cfg.tokenFile != null) {
              token_file = toString cfg.tokenFile;
            }
            // lib.optionalAttrs (cfg.sshKeyFile != null) {
              ssh_key_file = toString cfg.sshKeyFile;
            }
            // lib.optionalAttrs (!isDarwin) {
              # A user unit can only switch its Home Manager generation; without this
              # the agent would see /etc/NIXOS (or nixos-rebuild on PATH) and run
              # nixos-rebuild as the user.
              platform = "home-manager";
            }
          )
          # guard-rails: the agent checks the store's free space before a switch
          // shared.preflightSettings cfg [ ]
          // shared.visibilitySettings cfg
          // shared.healthSettings cfg;
      }

      (lib.mkIf isDarwin {
        launchd.agents.nixfleet-agent = {
          enable = true;
          config = {
            Label = agentLabel;
            ProgramArguments = [
              (lib.getExe cfg.package)
              "--config"
              "${configFile}"
            ];
            RunAtLoad = true;
            KeepAlive = true;
            # not "Background": launchd would throttle the rebuilds the agent runs
            EnvironmentVariables.PATH = agentPath;
            StandardOutPath = "${logDir}/agent.log";
            StandardErrorPath = "${logDir}/agent.log";
          };
        };

        launchd.agents.nixfleet-watchdog = lib.mkIf cfg.watchdog.enable {
          enable = true;
          config = {
            Label = watchdogLabel;
            ProgramArguments = [
              "/bin/sh"
              "${./watchdog.sh}"
              agentLabel
              "${homeDir}/Library/LaunchAgents/${agentLabel}.plist"
              # the agent touches it at every heartbeat, wherever settings put the state
              "${cfg.settings.state_dir}/alive"
              (toString cfg.watchdog.maxAge)
            ];
            StartInterval = 30;
            RunAtLoad = true;
            ProcessType = "Background";
            StandardOutPath = "${logDir}/watchdog.log";
            StandardErrorPath = "${logDir}/watchdog.log";
          };
        };

        # launchd does not create the directories of StandardOutPath.
        home.activation.nixfleetAgentLogDir = lib.hm.dag.entryBefore [ "setupLaunchAgents" ] ''
          run mkdir -p $VERBOSE_ARG -m 0700 ${lib.escapeShellArg logDir}
        '';
      })

      (lib.mkIf (!isDarwin) {
        systemd.user.services.nixfleet-agent = {
          Unit = {
            Description = "NixFleet agent";
            Documentation = [ "https://github.com/nixfleet/nixfleet-agent" ];
            # No network-online.target ordering: that is a system unit, which a user
            # manager cannot see or wait for. The agent needs none: it reconnects forever.
            # Activation must not restart the agent: that would SIGTERM a switch the agent
            # started (home-manager itself, halfway through activation). The agent restarts
            # itself after a switch when its definition changed, as on NixOS.
            X-RestartIfChanged = false;
          };
          Service = {
            ExecStart = "${lib.getExe cfg.package} --config ${configFile}";
            # only PATH: the token and the key are files the agent reads itself
            Environment = [ "PATH=${agentPath}" ];
            Restart = "always";
            RestartSec = 10;
            UMask = "0077";
          };
          Install.WantedBy = [ "default.target" ];
        };
      })
    ]
  );
}
