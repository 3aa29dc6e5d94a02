"""The ``circuitlens`` command: ``reproduce``, ``demo``, ``distill``, ``list``, ``zoo list|train``,
``real list|build``, ``plan``."""

# the parser and main here; what each command does in commands, the options in flags

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from circuitlens.cli import commands
from circuitlens.cli.flags import add_flags


def build_parser() -> argparse.ArgumentParser:
    """The ``circuitlens`` command line; each command's options come from
    :data:`~circuitlens.cli.flags.FLAGS`."""
    from circuitlens import __version__

    p = argparse.ArgumentParser(prog="circuitlens", description=__doc__)
    p.add_argument("--version", action="version", version=f"circuitlens {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    rep = sub.add_parser(
        "reproduce",
        help="the paper's comparison: tasks x conditions x seeds, table and HTML report",
    )
    add_flags(rep, "reproduce")
    rep.set_defaults(fn=commands.reproduce, resumes=commands.reproduce_out)
    run = sub.add_parser(
        "run",
        help="run an experiment file: tasks (any task, each with its teacher and student) x "
        "conditions x seeds, table and HTML report (configs/ holds the paper's and examples)",
    )
    run.add_argument("config", help="a .toml/.json ExperimentConfig, e.g. configs/paper-zoo.toml")
    add_flags(run, "run")
    run.set_defaults(fn=commands.run, resumes=commands.run_out)
    demo = sub.add_parser("demo", help="evaluate the zoo teachers and students on both tasks")
    add_flags(demo, "demo")
    demo.set_defaults(fn=commands.demo)
    dist = sub.add_parser("distill", help="distil a teacher's circuit into a student")
    add_flags(dist, "distill")
    dist.set_defaults(fn=commands.distill, resumes=lambda args: args.out)
    sub.add_parser(
        "list", help="every model load_model knows by name, source by source"
    ).set_defaults(fn=commands.list_models)

    zoo = sub.add_parser("zoo", help="the embedded tiny models")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)
    zsub.add_parser("list", help="zoo models with their accuracy").set_defaults(
        fn=commands.zoo_list
    )
    tr = zsub.add_parser("train", help="(re)build a zoo model from scratch, reproducibly")
    tr.add_argument("name", help="a zoo model name, or 'all'")
    add_flags(tr, "zoo train")
    tr.set_defaults(fn=commands.zoo_train, resumes=commands.zoo_train_dir)

    _real_parser(sub)
    _plan_parser(sub)
    return p


def _real_parser(sub: Any) -> None:
    real = sub.add_parser("real", help="real pretrained models (pip-installed) and their adapters")
    rsub = real.add_subparsers(dest="real_command", required=True)
    rsub.add_parser("list", help="real models and shipped task adapters").set_defaults(
        fn=commands.real_list
    )
    rb = rsub.add_parser(
        "build",
        help="fine-tune (teacher) or heal (student) a task adapter from its recipe; resumable",
    )
    rb.add_argument("name", help="a real task model name (circuitlens real list), or 'all'")
    add_flags(rb, "real build")
    rb.set_defaults(fn=commands.real_build, resumes=commands.real_build_dir)


def _plan_parser(sub: Any) -> None:
    plan = sub.add_parser(
        "plan",
        help="seeds a design needs: the exact sign-flip test's power at an effect and sd",
        description="The fewest seeds whose exact two-sided sign-flip test, at Holm's first "
        "level alpha / contrasts, detects per-seed paired differences Normal(effect, sd) with "
        "the given power (circuitlens.plan_seeds), and the power table. Give --effect and "
        "--sd, or --from a finished run to read the paired sd of its primary contrasts (and "
        "its design's effect, alpha and contrasts unless given).",
    )
    add_flags(plan, "plan")
    plan.set_defaults(fn=commands.plan)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; errors are one line on stderr: exit 2 for bad input, 1 for an
    OS failure (a full disk, a read-only or missing directory: what failed, on which path, the
    fix), 130 for Ctrl-C (with where the same command resumes from)."""
    from circuitlens.core.io import os_error_line

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        resumes = getattr(args, "resumes", None)
        again = f"; run the same command again to resume from {resumes(args)}" if resumes else ""
        print(f"\ncircuitlens: interrupted{again}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as e:
        if isinstance(e, FileNotFoundError) and e.errno is not None:  # from the OS: a path
            print(f"circuitlens: error: {os_error_line(e)}", file=sys.stderr)
            return 1
        print(f"circuitlens: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"circuitlens: error: {os_error_line(e)}", file=sys.stderr)
        return 1
