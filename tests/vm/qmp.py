#!/usr/bin/env python3
"""QMP for scripts/test-vm.

    qmp.py SOCKET command NAME [JSON-ARGUMENTS]
        Run one QMP command, print its "return" value as JSON. Exit 1 with QEMU's error on stderr
        when it fails, 2 when the socket does not answer.

    qmp.py SOCKET watch DRIVE-QDEV-ID IMAGE JOURNAL OUT
        Check that the drive is empty, insert IMAGE (blockdev-change-medium, force), then until
        killed poll query-block every 0.2 s and append to OUT, with seconds since the insertion:
          T inserted
          T state tray_open=B locked=B inserted=B      (each time the drive's state changes)
          T rip-started                                (JOURNAL first shows rip@sr0.service starting)
          T locked-before-rip                          (the door was seen locked in a poll made
                                                        before a read of JOURNAL that showed no rip)
"""
import json
import socket
import sys
import time


class Qmp:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.stream = self.sock.makefile("rw", encoding="utf-8", newline="\n")
        greeting = self._reply()
        if "QMP" not in greeting:
            raise OSError(f"unexpected greeting {greeting}")
        self.call("qmp_capabilities")

    def _reply(self):
        # Events (asynchronous messages) may come between commands and answers: skip them.
        while True:
            line = self.stream.readline()
            if not line:
                raise OSError("QEMU closed the monitor connection")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def call(self, name, args=None):
        msg = {"execute": name}
        if args is not None:
            msg["arguments"] = args
        self.stream.write(json.dumps(msg) + "\n")
        self.stream.flush()
        answer = self._reply()
        if "error" in answer:
            raise QmpError(f"{name}: {answer['error'].get('class')}: {answer['error'].get('desc')}")
        return answer.get("return")


class QmpError(Exception):
    pass


def drive(qmp, qdev):
    for b in qmp.call("query-block"):
        if b.get("qdev") == qdev or (b.get("qdev") or "").endswith(f"/{qdev}"):
            return bool(b.get("tray_open")), bool(b.get("locked")), "inserted" in b
    raise QmpError(f"no drive {qdev} in query-block")


def watch(qmp, qdev, image, journal, out_path):
    fmt = lambda v: "true" if v else "false"
    tray, locked, inserted = drive(qmp, qdev)
    if inserted:
        raise QmpError(f"drive {qdev} is not empty before the insertion")
    out = open(out_path, "a", buffering=1)
    qmp.call("blockdev-change-medium", {"id": qdev, "filename": image, "format": "raw",
                                        "read-only-mode": "read-only", "force": True})
    t0 = time.monotonic()
    since = lambda: f"{time.monotonic() - t0:.1f}"
    out.write(f"{since()} inserted\n")
    needle = b"Starting rip@sr0.service"
    offset, tail, rip_seen, locked_before_rip, last = 0, b"", False, False, None
    while True:
        state = drive(qmp, qdev)
        if state != last:
            out.write(f"{since()} state tray_open={fmt(state[0])} locked={fmt(state[1])} inserted={fmt(state[2])}\n")
            last = state
        if not rip_seen:
            try:
                with open(journal, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            offset += len(chunk)
            window = tail + chunk
            tail = window[-len(needle):]
            if needle in window:
                rip_seen = True
                out.write(f"{since()} rip-started\n")
            elif state[1] and not locked_before_rip:
                locked_before_rip = True
                out.write(f"{since()} locked-before-rip\n")
        time.sleep(0.2)


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 64
    path, mode = sys.argv[1], sys.argv[2]
    try:
        qmp = Qmp(path)
        if mode == "command":
            args = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
            print(json.dumps(qmp.call(sys.argv[3], args)))
        elif mode == "watch" and len(sys.argv) == 7:
            watch(qmp, *sys.argv[3:7])
        else:
            print(__doc__, file=sys.stderr)
            return 64
    except QmpError as e:
        print(f"qmp: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"qmp: {path}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
