"""The Prometheus text exposition format (version 0.0.4) for node_exporter's textfile collector,
written by a few lines of our own rather than ``prometheus_client``.

Why our own: the agent writes one small file of gauges and two counters; ``prometheus_client``
would add its registry, its HTTP/WSGI exposition modules and their imports to a process whose idle
memory is measured in single MiB (``bench/promclient-rss`` prints both figures; docs/visibility.md
has them). The format rules we need are few and are checked by the tests with the library's own
parser: ``# HELP``/``# TYPE`` once per family, label values escaped (``\\``, ``"``, newline), HELP
text escaped (``\\``, newline), one sample per line, a final newline.

The file is replaced atomically: a temporary file in the same directory (its name does not end in
``.prom``, so the collector never reads it half-written), fsync, rename over the old file, fsync of
the directory. Mode 0644: node_exporter runs as another user and must read it; it holds nothing
secret (versions, commit ids, times, counts - all of which the dashboard shows anyway).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

FILE_NAME = "nixfleet_agent.prom"
Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # gauge | counter
    help: str
    samples: Sequence[tuple[Labels, float]] = field(default_factory=tuple)


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for fam in families:
        if not fam.samples:
            continue  # unknown values are left out, never written as a made-up 0
        sample_name = fam.name + "_total" if fam.kind == "counter" else fam.name
        lines.append(f"# HELP {sample_name} {fam.help.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}")
        lines.append(f"# TYPE {sample_name} {fam.kind}")
        for labels, value in fam.samples:
            text = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels)
            lines.append(f"{sample_name}{{{text}}} {_number(value)}" if text else f"{sample_name} {_number(value)}")
    return "\n".join(lines) + "\n"


def write_atomic(directory: Path, text: str, name: str = FILE_NAME) -> Path:
    """Replace ``directory/name`` with ``text`` so a reader sees the old or the new file, whole."""
    target = directory / name
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.fchmod(fd, 0o644)  # the agent's umask is 077; node_exporter runs as another user
        data = text.encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    os.replace(tmp, target)
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return target
    try:
        os.fsync(dfd)  # the rename itself survives a crash
    except OSError:
        pass
    finally:
        os.close(dfd)
    return target
