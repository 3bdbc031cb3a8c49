"""`python -m editbench [overrides]` / `editbench [overrides]`: Hydra entry point.

`editbench ls [group]` lists what each config group offers; `editbench diff RUN_A RUN_B` shows
where two runs disagree, record by record. Before Hydra runs, the command line is
checked by composing it once, so a bad group option or key is one line with a suggestion, not a
Hydra traceback.
"""
from __future__ import annotations

import difflib
import sys
from pathlib import Path

import hydra
from omegaconf import OmegaConf

from editbench.errors import EditbenchError
from editbench.validate import check_config, check_environment, run_dir_suffix

GROUPS = ("editor", "model", "data", "protocol", "editor_model", "logger", "experiment", "hydra/launcher")


def register_resolvers() -> None:
    # run-dir suffix from the overrides: shell-safe and short (validate.run_dir_suffix)
    if not OmegaConf.has_resolver("eb_suffix"):
        OmegaConf.register_new_resolver("eb_suffix", run_dir_suffix)


def options(group: str) -> list[str]:
    """Config names in a group: shipped in the package, plus the user's top-level conf/."""
    names: set[str] = set()
    roots = [Path(__file__).parent / "conf", Path("conf")]
    for root in roots:
        names |= {p.stem for p in (root / group).glob("*.yaml")}
    if group == "hydra/launcher":
        names |= {"basic", "submitit_local", "submitit_slurm"}
    return sorted(names)


def _first_values(args: list[str]) -> list[list[str]]:
    """Expand sweep overrides (a,b,c) into command lines with one value each, so every value is checked."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(args)
    base = [o.input_line for o in parsed]
    firsts = [_first_of(o) if o.is_sweep_override() else line for o, line in zip(parsed, base)]
    lines = [[*firsts[:i], f"{o.get_key_element()}={v}", *firsts[i + 1:]]
             for i, o in enumerate(parsed) if o.is_sweep_override() for v in o.sweep_string_iterator()]
    return lines or [base]


def _first_of(o) -> str:
    return f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}"


def check_overrides(args: list[str]) -> None:
    """Compose the config for each value of each override; raise EditbenchError on the first problem."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    args = _overrides_only(args)
    try:
        lines = _first_values(args)
    except HydraException as e:
        raise EditbenchError(f"cannot parse the overrides {' '.join(args)!r}: {str(e).splitlines()[0]} — "
                             f"write them as key=value (sweeps: key=a,b,c)") from None
    with initialize_config_module("editbench.conf", version_base="1.3"):
        for line in lines:
            try:
                cfg = compose("config", overrides=line, return_hydra_config=False)
                container = OmegaConf.to_container(cfg, resolve=True)
            except MissingConfigException as e:
                group, name = _missing(str(e), line)
                close = difflib.get_close_matches(name, options(group), n=3, cutoff=0.4)
                hint = f"did you mean {', '.join(close)}? " if close else ""
                raise EditbenchError(f"unknown {group} '{name}' — {hint}available: {', '.join(options(group))} "
                                     f"(see `editbench ls {group}`)") from None
            except (HydraException, OmegaConfBaseException) as e:
                msg = " ".join(str(e).split())
                if msg.startswith("Could not override '"):
                    raise EditbenchError(_unknown_key(msg.split("'")[1], line)) from None
                raise EditbenchError(f"bad config override: {msg[:300]} — check the key against "
                                     f"`python -m editbench --cfg job`") from None
            check_config(container)  # every value, before Hydra creates a run directory
            check_environment(container)


def _unknown_key(key: str, line: list[str]) -> str:
    """One line for an override of a key the config does not have: the nearest existing key."""
    from hydra import compose

    parent, _, leaf = key.rpartition(".")
    rest = [o for o in line if o.lstrip("+~").split("=", 1)[0] != key]
    try:
        node = compose("config", overrides=rest, return_hydra_config=False)
        node = OmegaConf.select(node, parent) if parent else node
        keys = sorted(node.keys()) if OmegaConf.is_dict(node) else []
    except Exception:
        keys = []
    close = difflib.get_close_matches(leaf, keys, n=1, cutoff=0.5)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    where = f"{parent} has" if parent else "the config has"
    return (f"no config key '{key}' — {hint}{where}: {', '.join(keys)} "
            f"(see `python -m editbench --cfg job`)")


HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp",
                          "--config-dir", "-cd", "--experimental-rerun"}


def _overrides_only(args: list[str]) -> list[str]:
    """The key=value overrides of a command line, without Hydra's own flags and their values."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in HYDRA_FLAGS_WITH_VALUE:
            skip = True
        elif not a.startswith("-"):
            out.append(a)
    return out


def _missing(msg: str, line: list[str]) -> tuple[str, str]:
    for o in line:
        key, _, val = o.lstrip("+~").partition("=")
        if key in GROUPS and f"'{key}/{val}'" in msg:
            return key, val
    for g in GROUPS:
        if f"'{g}/" in msg:
            return g, msg.split(f"'{g}/")[1].split("'")[0]
    return "config", msg


def list_groups(group: str | None) -> None:
    if group and group not in GROUPS and group.rstrip("s") in GROUPS:
        group = group.rstrip("s")  # `editbench ls editors` reads naturally too
    for g in ([group] if group else GROUPS):
        if g not in GROUPS:
            raise EditbenchError(f"no config group '{g}' — groups: {', '.join(GROUPS)}")
        print(f"{g}: {', '.join(options(g))}")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def _hydra_main(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from editbench.run import RunStopped, format_table, run

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        run(cfg, run_dir, overrides=list(hc.overrides.task))
    except RunStopped as e:
        print(f"editbench: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except EditbenchError as e:
        discard_if_unused(run_dir)
        print(f"editbench: error: {e}", file=sys.stderr)
        sys.exit(2)
    rows = [__import__("json").loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    print(f"\n{rows[-1]['method']} | {cfg.model.name} | {cfg.data.name} | {cfg.protocol.scoring} scoring | {run_dir}")
    print(format_table(rows))


def discard_if_unused(run_dir: Path) -> None:
    """Remove a run directory that holds nothing but a released lock (Hydra creates the directory
    before the run starts; a run refused before its first write leaves it like that), and the
    empty folders above it, up to the working directory."""
    lock = run_dir / ".lock"
    try:
        if {p.name for p in run_dir.iterdir()} - {".lock"} or (lock.exists() and lock.stat().st_size):
            return
        lock.unlink(missing_ok=True)
        here, d = Path.cwd().resolve(), run_dir.resolve()
        while d != here and d != d.parent and not any(d.iterdir()):
            d.rmdir()
            d = d.parent
    except OSError:
        pass


def main() -> None:
    import warnings

    # the top-level conf/ is optional: Hydra warns when the folder is absent
    warnings.filterwarnings("ignore", message=r"provider=hydra\.searchpath in main, path=conf is not available")
    register_resolvers()
    argv = sys.argv[1:]
    try:
        if argv[:1] == ["ls"]:
            list_groups(argv[1] if len(argv) > 1 else None)
            return
        if argv[:1] == ["diff"]:
            from editbench.diff import main as diff_main

            sys.exit(diff_main(argv[1:]))
        if not any(a in ("--help", "-h", "--hydra-help", "--info", "-i") for a in argv):
            check_overrides(argv)
    except EditbenchError as e:
        print(f"editbench: error: {e}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
