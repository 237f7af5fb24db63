"""Shared pytest fixtures for every tier (stable; other suites depend on them).

Fixtures
--------
``dashboard``      a started reference dashboard (tests/dashboard.py) on a free loopback port with
                   token ``support.TEST_TOKEN``; closed after the test.
``fleet_repo``     a fresh git repository (``support.make_fleet_repo``) usable as ``NIXFLEET_REPO_URL``.
``agent_env``      a function ``agent_env(**overrides) -> dict`` giving the environment for an agent
                   talking to ``dashboard`` in isolated mode on ``fleet_repo`` with a private state dir
                   (``tmp_path/state``); pass ``NIXFLEET_X="..."`` to override, ``token=None`` to omit it.
``start_agent``    a function ``start_agent(env=None, args=(), **overrides) -> AgentProcess`` that starts the
                   agent as a real subprocess; every agent started is stopped (SIGTERM) after the test and
                   its log is printed if the test failed.
``wait_for``       ``support.wait_for``: ``wait_for(predicate, timeout=5.0, what="...")``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dashboard import Dashboard
from support import TEST_TOKEN, AgentProcess, make_fleet_repo
from support import agent_env as _agent_env
from support import wait_for as _wait_for


@pytest.fixture
def dashboard() -> Iterator[Dashboard]:
    dash = Dashboard(token=TEST_TOKEN).start()
    try:
        yield dash
    finally:
        dash.close()


@pytest.fixture
def fleet_repo(tmp_path: Path) -> Path:
    return make_fleet_repo(tmp_path / "origin")


@pytest.fixture
def agent_env(dashboard: Dashboard, fleet_repo: Path, tmp_path: Path) -> Callable[..., dict[str, str]]:
    def build(**overrides: Any) -> dict[str, str]:
        token = overrides.pop("token", TEST_TOKEN)
        base = {"NIXFLEET_REPO_URL": str(fleet_repo)}
        base.update(overrides)
        return _agent_env(dashboard.url, tmp_path / "state", token=token, **base)

    return build


@pytest.fixture
def start_agent(agent_env: Callable[..., dict[str, str]], request: pytest.FixtureRequest) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(env: dict[str, str] | None = None, args: tuple[str, ...] | list[str] = (), **overrides: Any) -> AgentProcess:
        agent = AgentProcess(env if env is not None else agent_env(**overrides), args)
        started.append(agent)
        return agent

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for agent in started:
        agent.stop()
        if failed:
            print(f"\n--- agent pid {agent.pid} log (last 60 lines) ---\n{agent.tail(60)}")


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    return _wait_for


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
