{
  lib,
  python3Packages,
  git,
  openssl,
  openssh,
  # The flake passes `self.rev or self.dirtyRev or "unknown"`; the agent reports it as
  # `source_commit`, so the dashboard can tell which revision a host really runs.
  sourceCommit ? "unknown",
}:

let
  root = ../..;

  # Test paths that need neither network nor sshd nor systemd, so they run in the build
  # sandbox. Paths that do not exist (yet) are left out rather than failing the build.
  offlineTests = lib.filter (path: builtins.pathExists (root + "/${path}")) [
    "tests/core"
    "tests/commands/test_runner.py"
    "tests/privileged"
    "tests/guard"
    "tests/visibility"
  ];
in
python3Packages.buildPythonApplication {
  pname = "nixfleet-agent";
  # One source of truth: the file setuptools reads too (tool.setuptools.dynamic).
  version = lib.trim (builtins.readFile ../../agent/nixfleet_agent/VERSION);
  pyproject = true;

  # Only the Python project and its offline tests: editing the modules, the docs or the
  # system tests does not change this derivation.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions (
      [
        ../../agent
        # shared fixtures: the reference dashboard and the agent-process helpers
        (lib.fileset.maybeMissing ../../tests/conftest.py)
        (lib.fileset.maybeMissing ../../tests/dashboard.py)
        (lib.fileset.maybeMissing ../../tests/support.py)
        # the fault-injecting TCP proxy and the raw-frame WebSocket peer of the link tests
        (lib.fileset.maybeMissing ../../tests/faultproxy.py)
        (lib.fileset.maybeMissing ../../tests/rawpeer.py)
        # the private mount namespace with small tmpfs of the pre-flight tests (they skip unless root)
        (lib.fileset.maybeMissing ../../tests/mountns.py)
      ]
      ++ map (path: root + "/${path}") offlineTests
    );
  };

  sourceRoot = "source/agent";

  postPatch = ''
    printf '%s\n' ${lib.escapeShellArg sourceCommit} > nixfleet_agent/SOURCE_COMMIT
  '';

  build-system = [ python3Packages.setuptools ];

  # Only websocket-client: the runner uses pipes (and the stdlib pty where a command needs a
  # terminal), so pexpect is not needed; see the "Pipes, not a pty" note in the README.
  dependencies = [
    python3Packages.websocket-client
  ]
  ++ lib.optionals (python3Packages.pythonOlder "3.11") [ python3Packages.tomli ];

  nativeCheckInputs = [
    python3Packages.pytestCheckHook
    python3Packages.hypothesis
    # the reference dashboard the connection tests talk to over loopback
    python3Packages.websockets
    # tests/visibility read the metrics text file back with prometheus_client's own parser
    # (a test-only dependency: the agent writes the format itself, see docs/visibility.md)
    python3Packages.prometheus-client
    git
    openssl
    # ssh-keygen: the root side's signed-commit tests make and check SSH signatures
    # (the OpenPGP case needs a gpg-agent and stays for dev/test)
    openssh
  ];

  # The tests live next to agent/, not inside it; git wants a home.
  preCheck = ''
    cd ..
    export HOME="$TMPDIR"
  '';

  # the tests run a WebSocket dashboard on 127.0.0.1
  __darwinAllowLocalNetworking = true;

  enabledTestPaths = offlineTests;

  pythonImportsCheck = [
    "nixfleet_agent"
    "nixfleet_agent.config"
    "nixfleet_agent.root.main"
  ];

  meta = {
    description = "Fleet agent connecting NixOS and macOS hosts to a NixFleet dashboard";
    # The NixFleet project: its dashboard is what this agent connects to and serves.
    homepage = "https://github.com/markus-barta/nixfleet";
    license = lib.licenses.agpl3Plus;
    platforms = [
      "x86_64-linux"
      "aarch64-linux"
      "x86_64-darwin"
      "aarch64-darwin"
    ];
    mainProgram = "nixfleet-agent";
  };
}
