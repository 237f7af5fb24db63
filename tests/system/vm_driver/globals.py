# ruff: noqa: F401 - these names are put in the script's scope, as the driver does
# The typed globals a NixOS VM test script sees, prepended to it for mypy by
# tests/system/test_vm_scripts.py the way nixpkgs' nixos/lib/testing/driver.nix prepends its own
# (then one `<node>: QemuMachine;` per node and `vlan<n>: VLan` per VLAN). The driver's file also
# brings these typing names into the script's scope, so a script may use them unimported under
# mypy (pyflakes, which does not see this file, still reports them).
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Protocol, Union
from unittest import TestCase

from nixos_driver_api import (
    BaseMachine,
    CreateMachineProtocol,
    Debug,
    Driver,
    Logger,
    PollingConditionProtocol,
    QemuMachine,
    RetryProtocol,
    VLan,
)

start_all: Callable[[], None]
subtest: Callable[[str], ContextManager[None]]
retry: RetryProtocol
test_script: Callable[[], None]
machines: List[BaseMachine]
vlans: List[VLan]
driver: Driver
log: Logger
create_machine: CreateMachineProtocol
run_tests: Callable[[], None]
join_all: Callable[[], None]
serial_stdout_off: Callable[[], None]
serial_stdout_on: Callable[[], None]
polling_condition: PollingConditionProtocol
debug: Debug
t: TestCase
