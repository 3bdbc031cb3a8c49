"""`python -m editbench [overrides]` / `editbench [overrides]`: Hydra entry point.

`editbench --help` is the usage page (`USAGE`); `editbench ls [group]` lists what each config group
offers, one line each; `editbench diff RUN_A RUN_B` shows where two runs disagree, record by record;
`editbench rescore RUN scoring=MODE` scores a run's kept checkpoints under another scoring mode;
`editbench retext RUN` adds the free-text metrics a run lacks from the texts it kept.
Before Hydra runs, the command line is checked by composing it once, so a bad group option or key
is one line with a suggestion, not a Hydra traceback.
"""
from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

import hydra
from omegaconf import OmegaConf

from editbench.errors import EditbenchError
from editbench.validate import run_dir_suffix

GROUPS = ("editor", "model", "data", "protocol", "editor_model", "logger", "experiment", "hydra/launcher")
#: hydra/launcher entries that Hydra itself provides (no YAML of ours to read a description from)
BUILTIN = {("hydra/launcher", "basic"): "Hydra's default: sweep jobs one after another in this process",
           ("hydra/launcher", "submitit_local"): "Hydra's submitit plugin, local processes (its defaults)",
           ("hydra/launcher", "submitit_slurm"): "Hydra's submitit plugin, SLURM (its defaults)"}

USAGE = """\
usage: editbench [KEY=VALUE ...]              one run (Hydra overrides)
       editbench -m [KEY=A,B ...]             a sweep: one run per combination
       editbench ls [GROUP]                   what each config group offers, one line per entry
       editbench diff RUN_DIR_A RUN_DIR_B     where two runs disagree, record by record
       editbench rescore RUN_DIR scoring=free  score a run's kept checkpoints under another scoring
       editbench retext RUN_DIR               add the free-text metrics a run lacks, from its kept texts
       editbench --cfg job [KEY=VALUE ...]    print the composed config and exit
       editbench --hydra-help                 Hydra's own flags
(`python -m editbench` is the same command.)

A run edits a stream of n_edits facts into a model one after another, evaluates Rel / Gen / Loc /
OP at the protocol's checkpoints, and writes metrics.jsonl, records/ and summary.json into
<out_dir>/<data>/<model>/<editor>/n<N>_s<seed>[_<overrides>]/. Re-running the same command resumes it.

examples:
  editbench                                            HoReN, SmolLM2-135M (embedded), 100 ZsRE edits
  editbench editor=grace n_edits=1000 out_dir=results  another editor, a longer stream
  editbench editor=rome data=wikibigedit threads=1     another dataset, one CPU thread
  editbench editor=horen model=qwen25_7b model.path=/models/Qwen2.5-7B-Instruct n_edits=50000
  editbench -m editor=horen editor.threshold=0.5,0.6,0.7 editor.pooling_ratio=0.5,0.6
  editbench -m hydra/launcher=slurm hydra.launcher.partition=gpu seed=0,1,2
  editbench ls editor                                  the editors, one line each
  python -m editbench.report --results results --out reports   tables and figures (`make figures`)

config groups (`editbench ls GROUP` for their entries):
  editor        the editing method and all its hyper-parameters (editor.<key>=...)
  model         the model: loading, dtype, device, chat template, the edit site
  data          the dataset: source (data.path=, data.hub=), stream order, offset
  protocol      scoring mode, checkpoint grid, retention sample, evaluation batch size
  editor_model  values for one editor x model pair, picked automatically (${editor}_${model})
  logger        an extra sink (wandb, offline by default); result files are always written
  experiment    bundles of overrides for the paper's runs and ablations
  hydra/launcher  where sweep jobs run: basic, slurm, local
top-level keys: n_edits seed resume(auto|never|force) tag out_dir threads cache_dir cache_max_gb save_every_min keep_checkpoints diagnostics

Bad input is one line on stderr (`editbench: error: <problem> — <fix>`) and exit status 2.
The manual: README.md and docs/ in the repository."""


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

    from editbench.build import validate
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    args = _overrides_only(args)
    try:
        lines = _first_values(args)
    except HydraException as e:
        raise EditbenchError(_unparsable(args, e)) from None
    for line in lines:
        for o in line:
            if o.lstrip("+~").split("=", 1)[0] == "protocol.version":
                raise EditbenchError(f"{o}: protocol.version is not a setting — it names the scoring code that "
                                     f"produced the rows (this code implements each shipped protocol at the version "
                                     f"its YAML states; older versions are retired: docs/protocol.md#versions); drop "
                                     f"it, or pick another protocol with protocol=<name>")
    with initialize_config_module("editbench.conf", version_base="1.3"):
        for line in lines:
            try:
                cfg = compose("config", overrides=line, return_hydra_config=False)
                OmegaConf.to_container(cfg, resolve=True)
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
                if "In 'local/" in msg:  # e.g. a launcher key in conf/local/default.yaml, which every run reads
                    raise EditbenchError(f"conf/local/: {msg[:200]} — conf/local/default.yaml applies to every run: "
                                         f"put launcher settings in conf/local/launcher/<launcher>.yaml, logger ones "
                                         f"in conf/local/logger/<logger>.yaml, model ones in "
                                         f"conf/local/model/<model>.yaml (conf/README.md)") from None
                raise EditbenchError(f"bad config override: {msg[:300]} — check the key against "
                                     f"`python -m editbench --cfg job`") from None
            validate(cfg)  # every value, before Hydra creates a run directory


#: what Hydra's override grammar reads in a value only inside quotes: non-ASCII letters, #, quotes,
#: parentheses, backslashes (and whitespace, which also splits an unquoted shell word)
NEEDS_QUOTES = re.compile(r"[^\x00-\x7f]|[\s#'\"()\\]")


def _unparsable(args: list[str], e: Exception) -> str:
    """One line for a command line Hydra's grammar cannot read, naming the override at fault and,
    for a value Hydra reads only quoted (`NEEDS_QUOTES`), how to quote it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for a in args:
        try:
            parser.parse_overrides([a])
        except HydraException:
            key, eq, value = a.partition("=")
            if not eq:
                return (f"cannot parse {a!r}: it is not key=value — a value with spaces is one shell word only "
                        f"when quoted: 'data.path=/my data/records.jsonl'")
            if NEEDS_QUOTES.search(value):
                return (f"cannot parse the value of {key} ({value!r}): Hydra reads it only quoted — quote the value "
                        f"for Hydra and the whole override for the shell: '{key}=\"{value}\"'")
            break
    return (f"cannot parse the overrides {' '.join(args)!r}: {str(e).splitlines()[0]} — write them as key=value "
            f"(sweeps: key=a,b,c)")


def _unknown_key(key: str, line: list[str]) -> str:
    """One line for an override of a key the config does not have: the nearest existing key, or,
    for a key that exists deeper in the config (`edit_site.layer`), its full path."""
    from hydra import compose

    parent, _, leaf = key.rpartition(".")
    rest = [o for o in line if o.lstrip("+~").split("=", 1)[0] != key]
    try:
        root = compose("config", overrides=rest, return_hydra_config=False)
    except Exception:
        root = OmegaConf.create()
    node = OmegaConf.select(root, parent) if parent else root
    if parent and not OmegaConf.is_dict(node):  # no such parent: the key may live under a group
        deeper = [p for p in _key_paths(OmegaConf.to_container(root, resolve=False)) if p.endswith("." + key)]
        if deeper:
            return (f"no config key '{key}' — did you mean {' or '.join(deeper[:3])}? "
                    f"(see `python -m editbench --cfg job`)")
        first, _, tail = key.partition(".")  # a misspelt group: match its first part at the top level
        keys = sorted(root.keys())
        close = difflib.get_close_matches(first, keys, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}.{tail}? " if close else ""
        return (f"no config key '{key}' — {hint}the config has: {', '.join(keys)} "
                f"(see `python -m editbench --cfg job`)")
    keys = sorted(node.keys()) if OmegaConf.is_dict(node) else []
    close = difflib.get_close_matches(leaf, keys, n=1, cutoff=0.5)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    where = f"{parent} has" if parent else "the config has"
    return (f"no config key '{key}' — {hint}{where}: {', '.join(keys)} "
            f"(see `python -m editbench --cfg job`)")


def _key_paths(d: dict, prefix: str = ""):
    """Every dotted key path of a nested dict."""
    for k, v in d.items():
        yield f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _key_paths(v, f"{prefix}{k}.")


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


REFERENCE = re.compile(r"\s*\([^()]*(?:/|et al)[^()]*\)")  # "(docs/editors.md#rome)", "(Meng et al. 2022)"
SENTENCE_END = re.compile(r"(?<!\bal)\.(?:\s|$)")  # a full stop, not the one of "et al."


def describe(group: str, name: str) -> str:
    """The first sentence of the comment that opens an entry's YAML (the user's conf/ first),
    without its references to docs, papers and repositories."""
    if (group, name) in BUILTIN:
        return BUILTIN[(group, name)]
    for root in (Path("conf"), Path(__file__).parent / "conf"):
        path = root / group / f"{name}.yaml"
        if path.is_file():
            words = []
            for line in path.read_text().splitlines():
                if not line.startswith("#"):
                    break
                if not line.startswith("# @package"):
                    words.append(line.lstrip("#").strip())
            text = REFERENCE.sub("", " ".join(words))
            first = SENTENCE_END.split(text, maxsplit=1)[0].strip()
            return first if len(first) <= 110 else first[:107].rstrip() + "..."
    return ""


def list_groups(group: str | None) -> None:
    """`editbench ls`: every group with its entries; `editbench ls GROUP`: one line per entry."""
    if group and group not in GROUPS and group.rstrip("s") in GROUPS:
        group = group.rstrip("s")  # `editbench ls editors` reads naturally too
    if group and group not in GROUPS:
        close = difflib.get_close_matches(group, GROUPS, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}? " if close else ""
        raise EditbenchError(f"no config group '{group}' — {hint}groups: {', '.join(GROUPS)}")
    if group is None:
        for g in GROUPS:
            print(f"{g}: {', '.join(options(g))}")
        print("(`editbench ls GROUP` describes each entry)")
        return
    names = options(group)
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {describe(group, name)}".rstrip())


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def _hydra_main(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from editbench.run import RunStopped, format_table, run
    from editbench.signals import hand_over

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        run(cfg, run_dir, overrides=list(hc.overrides.task))
    except RunStopped as e:
        print(f"editbench: {e}", file=sys.stderr, flush=True)
        if e.requeue:
            hand_over(e.signum, run_dir)  # under submitit: its handler requeues the job and exits
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

    from editbench.progress import quiet_library_bars

    quiet_library_bars()  # a job log gets plain lines, not bars: before anything imports tqdm
    # the top-level conf/ is optional: Hydra warns when the folder is absent
    warnings.filterwarnings("ignore", message=r"provider=hydra\.searchpath in main, path=conf is not available")
    register_resolvers()
    argv = sys.argv[1:]
    try:
        if argv[:1] == ["ls"]:
            list_groups(argv[1] if len(argv) > 1 else None)
            return
        if argv[:1] in (["--help"], ["-h"], ["help"]):
            print(USAGE)
            return
        if argv[:1] == ["diff"]:
            from editbench.diff import main as diff_main

            sys.exit(diff_main(argv[1:]))
        if argv[:1] == ["rescore"]:
            from editbench.rescore import main as rescore_main

            sys.exit(rescore_main(argv[1:]))
        if argv[:1] == ["retext"]:
            from editbench.retext import main as retext_main

            sys.exit(retext_main(argv[1:]))
        if not any(a in ("--help", "-h", "--hydra-help", "--info", "-i") for a in argv):
            check_overrides(argv)
    except EditbenchError as e:
        print(f"editbench: error: {e}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
