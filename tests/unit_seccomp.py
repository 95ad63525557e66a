"""The seccomp half of a systemd unit's sandbox, applied to one command outside systemd.

systemd (not PID 1 on a test machine) turns these [Service] settings into seccomp filters
that it loads in the service's process right before exec; this module builds the same filters
with libseccomp (ctypes, Debian's libseccomp2, the library systemd itself uses), loads them
and execs the command, so that the command and every child it starts (the engine worker,
ffmpeg) run as they would under the unit:

- ``SystemCallFilter=`` with ``SystemCallErrorNumber=``: an allow list (``@default`` added, as
  systemd adds it; ``~`` entries remove), groups expanded by this machine's
  ``systemd-analyze syscall-filter``; anything else fails with that errno.
- ``RestrictAddressFamilies=``: ``socket()`` of any other family fails with EAFNOSUPPORT.
- ``MemoryDenyWriteExecute=yes`` as systemd 252 does it (Debian 12, Raspberry Pi OS
  bookworm): ``mmap`` with PROT_WRITE|PROT_EXEC, ``mprotect``/``pkey_mprotect`` adding
  PROT_EXEC and ``shmat`` with SHM_EXEC fail with EPERM.
- ``RestrictNamespaces=yes``: ``setns``, and ``unshare`` and ``clone`` with a CLONE_NEW* flag,
  fail with EPERM; ``clone3`` (whose flags seccomp cannot see) with ENOSYS, so that glibc falls
  back to clone (a systemd that lets clone3 through is no stricter than this).
- ``RestrictRealtime=yes``: ``sched_setscheduler`` to SCHED_FIFO, SCHED_RR or SCHED_DEADLINE
  fails with EPERM.

``log=True`` sets SECCOMP_FILTER_FLAG_LOG on the allow list, so that each refused call is
written to the kernel log (``audit: type=1326 … syscall=N``) while still refused.

Run as ``python3 tests/unit_seccomp.py UNIT [--log] [--set KEY=VALUE]... -- COMMAND ...``."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Set, Tuple

from systemd_units import parse_unit

ALLOW = 0x7FFF0000
KILL_PROCESS = 0x80000000
MASKED_EQ, EQ, GE = 7, 4, 5
FILTER_FLAG_LOG = 6  # SCMP_FLTATR_CTL_LOG
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
CLONE_NEW = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
CLONE_NEWTIME = 0x00000080
SCHED_FIFO, SCHED_RR, SCHED_DEADLINE = 1, 2, 6
AF_MAX = 46

Rule = Tuple[int, int, int, int]  # argument index, comparison, mask or value, value


class ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def errno_action(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


def libseccomp() -> ctypes.CDLL:
    """Debian's libseccomp2; OSError when it is not installed."""
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ArgCmp),
    ]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    return lib


def syscall_groups() -> Dict[str, List[str]]:
    """Every ``@group`` and its members as this machine's systemd-analyze lists them."""
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True
    ).stdout
    groups: Dict[str, List[str]] = {}
    members: List[str] = []
    for line in listing.splitlines():
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if not line[0].isspace():
            members = groups.setdefault(word, [])
        else:
            members.append(word)
    return groups


def expand(names: Iterable[str], groups: Dict[str, List[str]]) -> Set[str]:
    found: Set[str] = set()
    for name in names:
        found |= expand(groups[name], groups) if name.startswith("@") else {name}
    return found


def allowed_syscalls(filters: Sequence[str], groups: Dict[str, List[str]]) -> Set[str]:
    """The allow list systemd builds from the unit's SystemCallFilter= lines, in order."""
    assert filters and not filters[0].startswith("~"), "only an allow list is emulated"
    allowed = expand(["@default"], groups)
    for line in filters:
        names = line.lstrip("~").split()
        if line.startswith("~"):
            allowed -= expand(names, groups)
        else:
            allowed |= expand(names, groups)
    return allowed


def family_numbers(names: Sequence[str]) -> Set[int]:
    return {int(getattr(socket, name)) for name in names}


class Filter:
    """One seccomp filter: a default action and rules; filters stack as systemd's do (the
    kernel runs them all, and the strictest answer wins)."""

    def __init__(self, lib: ctypes.CDLL, default: int) -> None:
        self.lib = lib
        self.ctx = lib.seccomp_init(default)
        assert self.ctx, "seccomp_init failed"

    def add(self, action: int, name: str, *rules: Rule) -> None:
        number = self.lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:  # unknown to libseccomp, or not a call on this architecture
            return
        array = (ArgCmp * max(1, len(rules)))(*[ArgCmp(*rule) for rule in rules])
        result = self.lib.seccomp_rule_add_array(self.ctx, action, number, len(rules), array)
        assert result == 0, f"seccomp_rule_add {name}: {os.strerror(-result)}"

    def load(self) -> None:
        result = self.lib.seccomp_load(self.ctx)
        assert result == 0, f"seccomp_load: {os.strerror(-result)}"


def unit_filters(lib: ctypes.CDLL, service: Dict[str, List[str]], log: bool) -> List[Filter]:
    """The filters systemd would load for this [Service] section."""
    made: List[Filter] = []
    if service.get("SystemCallFilter"):
        error = service.get("SystemCallErrorNumber", [])
        default = errno_action(getattr(errno, error[-1])) if error else KILL_PROCESS
        allow = Filter(lib, default)
        for name in sorted(allowed_syscalls(service["SystemCallFilter"], syscall_groups())):
            allow.add(ALLOW, name)
        if log:
            assert lib.seccomp_attr_set(allow.ctx, FILTER_FLAG_LOG, 1) == 0
            if os.geteuid() == 0:
                # SQLite fchowns a new journal only when run as root, which the service never
                # is; refused and logged, the records would flood the rate-limited kernel log
                # and hide the calls that matter.
                allow.add(ALLOW, "fchown")
        made.append(allow)
    restrict = Filter(lib, ALLOW)
    families = [
        word for line in service.get("RestrictAddressFamilies", []) for word in line.split()
    ]
    if families:
        allowed = family_numbers(families)
        for family in sorted(set(range(AF_MAX)) - allowed):
            restrict.add(errno_action(errno.EAFNOSUPPORT), "socket", (0, EQ, family, 0))
    eperm = errno_action(errno.EPERM)
    if service.get("MemoryDenyWriteExecute") == ["yes"]:
        write_exec = PROT_WRITE | PROT_EXEC
        restrict.add(eperm, "mmap", (2, MASKED_EQ, write_exec, write_exec))
        for name in ("mprotect", "pkey_mprotect"):
            restrict.add(eperm, name, (2, MASKED_EQ, PROT_EXEC, PROT_EXEC))
        restrict.add(eperm, "shmat", (2, MASKED_EQ, SHM_EXEC, SHM_EXEC))
    if service.get("RestrictNamespaces") == ["yes"]:
        restrict.add(eperm, "setns")
        for flag in (*CLONE_NEW, CLONE_NEWTIME):
            for name in ("unshare", "clone"):
                restrict.add(eperm, name, (0, MASKED_EQ, flag, flag))
        restrict.add(errno_action(errno.ENOSYS), "clone3")
    if service.get("RestrictRealtime") == ["yes"]:
        for policy in (SCHED_FIFO, SCHED_RR):
            restrict.add(eperm, "sched_setscheduler", (1, EQ, policy, 0))
        restrict.add(eperm, "sched_setscheduler", (1, GE, SCHED_DEADLINE, 0))
    return [*made, restrict]


def exec_under_unit(
    unit: Path, command: Sequence[str], log: bool = False, overrides: Sequence[str] = ()
) -> None:
    """Load the unit's filters into this process and exec ``command`` (never returns).
    ``overrides``: ``KEY=VALUE`` settings that replace the unit's, as a drop-in would."""
    service = parse_unit(Path(unit).read_text(encoding="utf-8"))["Service"]
    for setting in overrides:
        key, _, value = setting.partition("=")
        service[key] = [value]
    # the allow list last: it refuses seccomp() itself
    for each in reversed(unit_filters(libseccomp(), service, log)):
        each.load()
    os.execvp(command[0], list(command))


def main(argv: Sequence[str]) -> None:
    unit, *options = argv[: argv.index("--")]
    overrides = [value for flag, value in zip(options, options[1:]) if flag == "--set"]
    command = argv[argv.index("--") + 1 :]
    exec_under_unit(Path(unit), command, log="--log" in options, overrides=overrides)


if __name__ == "__main__":
    main(sys.argv[1:])
