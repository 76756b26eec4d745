"""The `prophrl` command line."""

from __future__ import annotations

import argparse
import shlex
import sys

from prophrl_common.config_io import ConfigError


def _cmd_up(args: argparse.Namespace) -> int:
    from prophrl.profiles import load_profile, parse_overrides
    from prophrl.up import node_command, run_profile

    profile = load_profile(args.profile, parse_overrides(args.overrides))
    if args.dry_run:
        for spec in profile.nodes:
            print(f"# {spec.name}{'' if spec.required else ' (optional)'}")
            print(shlex.join(node_command(spec)))
        return 0
    return run_profile(profile)


def _cmd_profiles(_args: argparse.Namespace) -> int:
    from prophrl.profiles import available_profiles, load_profile

    for name in available_profiles():
        profile = load_profile(name)
        args = ", ".join(f"{a.name}:={a.default}" for a in profile.arguments)
        print(f"{name:14s} {profile.description}")
        print(f"{'':14s} nodes: {', '.join(n.name for n in profile.nodes)}; arguments: {args or '-'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prophrl", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    up = verbs.add_parser("up", help="run a launch profile's nodes (no ros2 launch needed)")
    up.add_argument("profile", help="profile name (config/profiles/NAME.yaml) or a path to one")
    up.add_argument("overrides", nargs="*", metavar="name:=value", help="profile arguments, e.g. robot:=ur5e_sim")
    up.add_argument("--dry-run", action="store_true", help="print the node commands and exit")
    up.set_defaults(func=_cmd_up)

    profiles = verbs.add_parser("profiles", help="list launch profiles, their nodes and arguments")
    profiles.set_defaults(func=_cmd_profiles)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"prophrl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
