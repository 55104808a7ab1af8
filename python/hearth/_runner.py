"""``python -m hearth run FILE.py NAME [--INPUT VALUE ...]``, like ``pyflyte run``.

Loads FILE as a module named after it (not as ``__main__``, so its
``if __name__ == "__main__"`` block does not run; its directory is put first
on ``sys.path``), finds NAME (a workflow, a task or a launch plan), parses
the inputs from the command line by their type hints, runs it and prints
the outputs on stdout: a single value as it is (``str`` plainly, numbers,
lists and dicts as JSON, anything else as ``str()`` prints it: ``Color.RED``,
``2024-01-02 03:04:05``), a tuple one element per line (a named tuple as
``field: value``), nothing for None. Each task
the run made is reported on stderr (``--quiet`` turns that off):

    hearth: task plus_one t-1f… replica=my-actor-3c… pid=7 warm 0.84 ms -> 4

Inputs: ``--name VALUE`` (``--my-input`` and ``--my_input`` both work).
``int``, ``float``, ``str``; ``bool`` as true/false/yes/no/1/0; ``bytes`` as
UTF-8; ``Optional[X]`` takes ``none``; enums by value or name; dates as ISO
8601; anything else (lists, dicts, dataclasses' fields) as JSON.

Exit status: 0 done; 1 the run failed (a task raised, the daemon refused,
hearthd not running); 2 a usage error (no such file or name, a bad input).
Also installed as ``hearth-run FILE.py NAME ...``.
"""

import argparse
import datetime
import enum
import importlib.util
import inspect
import json
import os
import sys
import typing

__all__ = ["main", "main_run", "load_file", "parse_value", "format_outputs"]


class UsageError(Exception):
    pass


def load_file(path):
    """Imports ``path`` as a module named after the file."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise UsageError("%s: no such file" % path)
    name = os.path.splitext(os.path.basename(path))[0]
    if not name.isidentifier():
        raise UsageError("%s: %r is not a Python identifier, so a replica could not import it; rename the file"
                         % (path, name))
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    existing = sys.modules.get(name)
    if existing is not None and os.path.abspath(getattr(existing, "__file__", "") or "") != path:
        raise UsageError("%s: a module named %r is already imported from %s; rename the file"
                         % (path, name, getattr(existing, "__file__", "the standard library")))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}


def parse_value(text, hint, name):
    """A command-line string as a value of type ``hint``."""
    if hint is inspect.Parameter.empty or hint is typing.Any:
        try:
            return json.loads(text)
        except ValueError:
            return text
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return parse_value(text, a, name)
            except UsageError as e:
                errors.append(str(e))
        raise UsageError(errors[0] if errors else "--%s: cannot parse %r" % (name, text))
    from_path = getattr(hint, "_hearth_parse", None)
    if from_path is not None:  # FlyteFile, FlyteDirectory: a local path
        try:
            return from_path(text)
        except ValueError as e:
            raise UsageError("--%s: %s" % (name.replace("_", "-"), e))
    try:
        if hint is str:
            return text
        if hint is bool:
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if hint is int:
            return int(text, 0) if text.lower().startswith(("0x", "0o", "0b")) else int(text)
        if hint is float:
            return float(text)
        if hint is bytes:
            return text.encode()
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            for member in hint:
                if str(member.value) == text or member.name == text:
                    return member
            raise ValueError
        if hint is datetime.datetime:
            return datetime.datetime.fromisoformat(text)
        if hint is datetime.date:
            return datetime.date.fromisoformat(text)
        value = json.loads(text)
        if origin is tuple and isinstance(value, list):
            value = tuple(value)
        elif origin in (set, frozenset) and isinstance(value, list):
            value = origin(value)
        elif isinstance(hint, type) and isinstance(value, dict) and hasattr(hint, "__dataclass_fields__"):
            value = hint(**value)
        return value
    except (ValueError, TypeError):
        from hearth._typecheck import describe

        raise UsageError("--%s: %r is not a valid %s" % (name.replace("_", "-"), text, describe(hint)))


def _inputs(entity):
    from hearth._actor import ActorTask
    from hearth._workflow import LaunchPlan, Workflow

    if isinstance(entity, LaunchPlan):
        out = []
        for n, hint, default in entity.workflow.signature.inputs():
            if n in entity.fixed_inputs:
                continue
            out.append((n, hint, entity.default_inputs.get(n, default)))
        return out
    if isinstance(entity, (Workflow, ActorTask)):
        return entity.signature.inputs()
    raise UsageError("%r is not a workflow, task or launch plan" % (entity,))


def _show(value):
    if isinstance(value, enum.Enum):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)) or value is None:
        return json.dumps(value)
    if not isinstance(value, (list, dict, tuple)):
        return str(value)  # datetimes, Decimal, UUID, paths, files, dataclasses: as Python prints them
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def format_outputs(value):
    """Lines to print for a result."""
    if value is None:
        return []
    if isinstance(value, tuple):
        fields = getattr(value, "_fields", None)
        if fields:
            return ["%s: %s" % (f, _show(v)) for f, v in zip(fields, value)]
        return [_show(v) for v in value]
    return [_show(value)]


def _report(start, applies_start):
    from hearth import _actor

    for env, outcome in list(_actor.applies)[applies_start:]:
        if outcome != "unchanged":
            sys.stderr.write("hearth: environment %s %s\n" % (env, outcome))
    for run in list(_actor.runs)[start:]:
        sys.stderr.write(_trace_line(run) + "\n")


def _trace_line(run):
    if run.state == "cached":  # from the caller's task cache: no replica ran it
        return "hearth: task %s cached -> %s" % (run.task, run.result_repr)
    # One token, so the line stays easy to parse: cold(spare) = a pre-started spare was adopted.
    when = ("cold(spare)" if run.spare else "cold") if run.cold else "warm"
    return "hearth: task %s %s replica=%s pid=%s %s %.2f ms -> %s" % (
        run.task, run.id, run.replica, run.pid, when, run.total_us / 1000.0, run.result_repr)


def main_run(argv=None, prog="hearth-run"):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=prog, description="Run a workflow, task or launch plan of FILE on hearthd; print its outputs.",
        epilog="Inputs follow NAME as --INPUT VALUE; `%s FILE NAME --help` lists them." % prog)
    parser.add_argument("file", metavar="FILE.py")
    parser.add_argument("name", metavar="NAME", help="workflow, task or launch plan in FILE")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not report each task on stderr")
    parser.add_argument("--json", action="store_true", help="print the outputs as one JSON value")
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        parser.parse_args(argv)  # prints usage or help, exits 2 or 0
    # Options before FILE belong to us; what follows NAME belongs to the entity.
    ours = []
    while argv and argv[0].startswith("-"):
        ours.append(argv.pop(0))
    if len(argv) < 2:
        parser.error("FILE and NAME are required")
    args = parser.parse_args(ours + argv[:2])
    rest = argv[2:]
    try:
        module = load_file(args.file)
        entity = getattr(module, args.name, None)
        if entity is None:
            raise UsageError("%s has no %r" % (args.file, args.name))
        inputs = _inputs(entity)
        ip = argparse.ArgumentParser(prog="%s %s %s" % (prog, args.file, args.name),
                                     description="Inputs of %s." % args.name)
        from hearth._typecheck import describe

        for n, hint, default in inputs:
            flags = ["--" + n] + (["--" + n.replace("_", "-")] if "_" in n else [])
            required = default is inspect.Parameter.empty
            ip.add_argument(*flags, dest=n, metavar="VALUE", required=required,
                            help="%s%s" % (describe(hint) if hint is not inspect.Parameter.empty else "any",
                                           "" if required else " (default: %r)" % (default,)))
        ns = ip.parse_args(rest)
        hints = {n: h for n, h, _ in inputs}
        kwargs = {n: parse_value(v, hints[n], n) for n, v in vars(ns).items() if v is not None}
    except UsageError as e:
        sys.stderr.write("%s: error: %s\n" % (prog, e))
        return 2
    from hearth import _actor
    from hearth._errors import HearthError
    from hearth._typecheck import InputError

    start, applies_start = len(_actor.runs), len(_actor.applies)
    try:
        try:
            result = entity(**kwargs)
        except InputError as e:
            sys.stderr.write("%s: error: %s\n" % (prog, e))
            return 2
    except HearthError as e:
        if not args.quiet:
            _report(start, applies_start)
        sys.stderr.write("%s: %s\n" % (prog, e))
        return 1
    if not args.quiet:
        _report(start, applies_start)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        for line in format_outputs(result):
            print(line)
    sys.stdout.flush()
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m hearth run [-q] [--json] FILE.py NAME [--INPUT VALUE ...]\n" \
            "       python -m hearth cache {list,clear} [--task NAME]\n"
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(usage + "\nRuns a workflow, task or launch plan of FILE.py on hearthd (see "
                         "`python -m hearth run --help`).\n")
        return 0 if argv else 2
    if argv[0] == "cache":
        from hearth import _taskcache

        return _taskcache.main(argv[1:])
    if argv[0] != "run":
        sys.stderr.write(usage + "python -m hearth: unknown command %r\n" % argv[0])
        return 2
    return main_run(argv[1:], prog="python -m hearth run")
