"""``trio-kcm demo``: not written yet."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    subparsers.add_parser("demo", help="(not written yet)")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("trio-kcm demo")
