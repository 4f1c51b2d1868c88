#!/usr/bin/python3
"""Drive a python3-dbusmock stand-in for udisksd (tests/acceptance/eject.rs).

dbusmock has no udisks2 template, so the test starts a bare mock

    python3 -m dbusmock --system org.freedesktop.UDisks2 /org/freedesktop/UDisks2 \
        org.freedesktop.UDisks2.Manager

on a private bus (DBUS_SYSTEM_BUS_ADDRESS) and this script gives it the objects rip talks to:

    udisks_mock.py setup DRIVE [BLOCK_NAME]
        waits until the mock owns org.freedesktop.UDisks2, adds the Drive object DRIVE with an
        `Eject(a{sv})` method and, with BLOCK_NAME (e.g. loop3), the Block object
        /org/freedesktop/UDisks2/block_devices/BLOCK_NAME whose `Drive` property is DRIVE; then reads
        them back through the bus, so the objects answer before it exits 0.
    udisks_mock.py calls PATH
        prints the method calls the mock recorded on PATH as JSON: [{"method": .., "args": [..]}].

It uses only the `dbus` module that python3-dbusmock depends on.
"""

import json
import os
import sys
import time

import dbus

BUS_NAME = "org.freedesktop.UDisks2"
ROOT = "/org/freedesktop/UDisks2"
MOCK = "org.freedesktop.DBus.Mock"
PROPS = "org.freedesktop.DBus.Properties"
BLOCK = "org.freedesktop.UDisks2.Block"
DRIVE = "org.freedesktop.UDisks2.Drive"


def bus():
    address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    if not address:
        sys.exit("DBUS_SYSTEM_BUS_ADDRESS is not set")
    return dbus.bus.BusConnection(address)


def wait_for_mock(conn, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not conn.name_has_owner(BUS_NAME):
        if time.monotonic() > deadline:
            sys.exit(f"{BUS_NAME} did not appear on the bus within {timeout}s")
        time.sleep(0.05)


def setup(drive, block_name=None):
    conn = bus()
    wait_for_mock(conn)
    mock = dbus.Interface(conn.get_object(BUS_NAME, ROOT), MOCK)
    mock.AddObject(
        drive,
        DRIVE,
        {
            "Ejectable": dbus.Boolean(True),
            "MediaRemovable": dbus.Boolean(True),
            "Id": dbus.String("Rafty-Test-Drive"),
        },
        [("Eject", "a{sv}", "", "")],
        signature="ssa{sv}a(ssss)",
    )
    # The drive answers on its own interface: an Eject here would be recorded, so ask its properties.
    got = conn.get_object(BUS_NAME, drive).Get(DRIVE, "Ejectable", dbus_interface=PROPS)
    assert bool(got), f"{drive}: Ejectable reads {got!r}"
    if block_name:
        block = f"{ROOT}/block_devices/{block_name}"
        mock.AddObject(
            block,
            BLOCK,
            {
                "Drive": dbus.ObjectPath(drive),
                "Device": dbus.ByteArray(f"/dev/{block_name}".encode() + b"\0"),
                "ReadOnly": dbus.Boolean(True),
            },
            [],
            signature="ssa{sv}a(ssss)",
        )
        got = conn.get_object(BUS_NAME, block).Get(BLOCK, "Drive", dbus_interface=PROPS)
        assert str(got) == drive, f"{block}: Drive reads {got!r}, not {drive}"
    print("ready", flush=True)


def plain(value):
    """A D-Bus value as plain JSON data."""
    if isinstance(value, (dbus.Dictionary, dict)):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (dbus.Array, dbus.Struct, list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dbus.Boolean):
        return bool(value)
    if isinstance(value, (int, float)):
        return value
    return str(value)


def calls(path):
    conn = bus()
    mock = dbus.Interface(conn.get_object(BUS_NAME, path), MOCK)
    out = [{"method": str(name), "args": plain(args)} for _stamp, name, args in mock.GetCalls()]
    print(json.dumps(out), flush=True)


def main(argv):
    if len(argv) >= 2 and argv[0] == "setup" and len(argv) <= 3:
        setup(*argv[1:])
    elif len(argv) == 2 and argv[0] == "calls":
        calls(argv[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
