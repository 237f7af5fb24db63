"""The root program runs in the test process here (``root_main.main``): it sets the process umask
to 077 and the tests set ``SHIM_*`` variables. Both are restored after every test, so later tiers
(the nspawn rootfs overlay is made by this same process) see the umask and environment they had."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from root_support import RootRun


@pytest.fixture(autouse=True)
def _restore_umask_and_environment() -> Iterator[None]:
    umask = os.umask(0o022)
    os.umask(umask)
    environ = dict(os.environ)
    yield
    os.umask(umask)
    os.environ.clear()
    os.environ.update(environ)


@pytest.fixture
def runs() -> Iterator[list[RootRun]]:
    """Root programs a test started as processes; killed (with their build groups) afterwards."""
    started: list[RootRun] = []
    yield started
    for run in started:
        run.kill()
