"""Generate agent/syscalls.py from the Linux UAPI headers of this machine.

Reads Debian's linux-libc-dev headers (``apt-get install linux-libc-dev``):
``asm/unistd_64.h`` (x86_64), ``asm/unistd_32.h`` (i386) and
``asm/unistd_x32.h`` (x32, where every number is ``__X32_SYSCALL_BIT + n``).
The x32 table stores the number the kernel puts in ``seccomp_data.nr``, i.e.
with bit 30 set.

    .venv/bin/python scripts/gen_syscalls.py            # rewrite agent/syscalls.py
    .venv/bin/python scripts/gen_syscalls.py --check    # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ASM_DIR = Path("/usr/include/x86_64-linux-gnu/asm")
OUTPUT = Path(__file__).resolve().parents[1] / "agent" / "syscalls.py"
X32_SYSCALL_BIT = 0x40000000
TABLES = (("X86_64", "unistd_64.h"), ("I386", "unistd_32.h"), ("X32", "unistd_x32.h"))

_DEFINE = re.compile(r"^#define __NR_(\w+)\s+(?:\(__X32_SYSCALL_BIT \+ (\d+)\)|(\d+))\s*$")


def parse_header(text: str) -> dict[str, int]:
    """Map syscall name to number for every ``#define __NR_name number`` line."""
    table: dict[str, int] = {}
    for line in text.splitlines():
        match = _DEFINE.match(line.strip())
        if match is None:
            continue
        name, x32, plain = match.groups()
        table[name] = X32_SYSCALL_BIT + int(x32) if x32 is not None else int(plain)
    return table


def render_table(name: str, header: str, table: dict[str, int]) -> list[str]:
    lines = [f"# From asm/{header}: {len(table)} syscalls.",
             f"{name}: Final[Mapping[str, int]] = {{"]
    row = "   "
    for key, number in sorted(table.items(), key=lambda item: item[1]):
        entry = f' "{key}": {number:#x},' if number >= X32_SYSCALL_BIT else f' "{key}": {number},'
        if len(row) + len(entry) > 99:
            lines.append(row)
            row = "   "
        row += entry
    lines.extend([row, "}", ""])
    return lines


def render(asm_dir: Path) -> str:
    out = [
        '"""Syscall name -> number for x86_64, i386 and x32 (generated, do not edit).',
        "",
        "Produced by scripts/gen_syscalls.py from the Linux UAPI headers",
        "(linux-libc-dev, asm/unistd_{64,32,x32}.h). x32 numbers include",
        "__X32_SYSCALL_BIT (0x40000000), as the kernel reports them in seccomp_data.nr.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from collections.abc import Mapping",
        "from typing import Final",
        "",
    ]
    for name, header in TABLES:
        out.extend(render_table(name, header, parse_header((asm_dir / header).read_text())))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the output is stale")
    parser.add_argument("--asm-dir", type=Path, default=ASM_DIR)
    args = parser.parse_args(argv)
    text = render(args.asm_dir)
    if args.check:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run scripts/gen_syscalls.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
