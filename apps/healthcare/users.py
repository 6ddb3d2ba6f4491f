"""Manage who may sign in to the healthcare web app.

    python -m apps.healthcare.users add NAME [--password-stdin] [--file PATH]
    python -m apps.healthcare.users remove NAME [--file PATH]
    python -m apps.healthcare.users list [--file PATH]

The file is the app's users file: ``$MODALMESH_USERS_FILE`` when set, else
``<MODALMESH_DATA_DIR or .modalmesh/data/healthcare>/users.txt``, one ``name:<scrypt hash>`` per line.
``add`` of an existing name changes its password. Edits keep the file's comments and other lines, and
replace the file whole (mode 0600), so the app never reads half of one. A running app follows the
file: a new password works at the next sign-in, and a removed user's sessions end at the next request.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from apps.healthcare.auth import check_user_name, hash_password, parse_users, write_private
from services.runtime.settings import REPO_ROOT

HEADER = "# Users of the healthcare web app: name:scrypt hash. Manage with python -m apps.healthcare.users\n"


def default_users_file() -> Path:
    """The file the app reads, as its settings choose it (MODALMESH_USERS_FILE, else the data directory's)."""
    if os.environ.get("MODALMESH_USERS_FILE"):
        return Path(os.environ["MODALMESH_USERS_FILE"])
    data_dir = os.environ.get("MODALMESH_DATA_DIR") or REPO_ROOT / ".modalmesh" / "data" / "healthcare"
    return Path(data_dir) / "users.txt"


def add_user(path: Path, name: str, password: str) -> bool:
    """Add ``name`` or change its password; True when it is new."""
    check_user_name(name)
    if not password:
        raise ValueError("the password is empty")
    lines = _lines(path) or [HEADER]
    entry = f"{name}:{hash_password(password)}\n"
    index = _index_of(lines, name)
    if index is None:
        lines.append(entry)
    else:
        lines[index] = entry
    _save(path, lines)
    return index is None


def remove_user(path: Path, name: str) -> None:
    lines = _lines(path)
    index = _index_of(lines, name)
    if index is None:
        raise ValueError(f"no user {name} in {path}")
    del lines[index]
    _save(path, lines)


def list_users(path: Path) -> list[str]:
    return sorted(parse_users(path.read_text(encoding="utf-8"), str(path)))


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    parse_users(text, str(path))   # refuse to edit a file the app could not read
    return [line if line.endswith("\n") else line + "\n" for line in text.splitlines(keepends=True)]


def _index_of(lines: list[str], name: str) -> int | None:
    return next((i for i, line in enumerate(lines) if line.strip().partition(":")[0] == name
                 and not line.lstrip().startswith("#")), None)


def _save(path: Path, lines: list[str]) -> None:
    text = "".join(lines)
    parse_users(text, str(path))
    write_private(path, text.encode())


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("Password: ")
    if password != getpass.getpass("Again: "):
        raise ValueError("the two passwords differ")
    return password


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apps.healthcare.users", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add a user, or change a user's password")
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
    remove = commands.add_parser("remove", help="remove a user")
    remove.add_argument("name")
    commands.add_parser("list", help="list the user names")
    for command in (add, remove, commands.choices["list"]):
        command.add_argument("--file", type=Path, default=None,
                             help="the users file (default: $MODALMESH_USERS_FILE, else "
                                  "$MODALMESH_DATA_DIR/users.txt, else .modalmesh/data/healthcare/users.txt)")
    args = parser.parse_args(argv)
    path = args.file or default_users_file()
    try:
        if args.command == "add":
            check_user_name(args.name)
            created = add_user(path, args.name, _read_password(args.password_stdin))
            print(f"{'added' if created else 'changed the password of'} {args.name} in {path}")
        elif args.command == "remove":
            remove_user(path, args.name)
            print(f"removed {args.name} from {path}")
        else:
            print("\n".join(list_users(path)))
    except (ValueError, OSError, EOFError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
