"""Reference sender for the throughput floor: no agent code, just what any one-frame-per-line agent
must do per line (build the output message, json.dumps it, mask and send one frame).

argv: URL TOKEN HOST LINES. Prints its monotonic start time, then registers and sends.
"""

from __future__ import annotations

import json
import sys
import time

import websocket
from emit_lines import line


def main() -> int:
    url, token, host, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ws = websocket.WebSocket(skip_utf8_validation=True)
    ws.connect(url, header=["Authorization: Bearer " + token], suppress_origin=True)
    ws.send(json.dumps({"type": "register", "payload": {"hostname": host}}))
    ws.recv()
    lines = [line(i) for i in range(n)]
    print(time.monotonic(), flush=True)
    for text in lines:
        ws.send(json.dumps({"type": "output", "payload": {"line": text, "stream": "stdout", "command": "test",
                                                           "is_error": False}}, ensure_ascii=False,
                           separators=(",", ":")))
    ws.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
