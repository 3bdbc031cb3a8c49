"""Every configured value is checked before the model loads (and, from the command line, before
Hydra creates a run directory): types, ranges, finiteness, choices, unknown keys, and what the
machine can do (a CUDA device, a model path, a writable `out_dir`).

The checks come from two places. Groups built from a `_target_` (editor, data, logger) are checked
against the target's signature: every parameter's annotation (`Annotated[float, Field(gt=0)]`,
`Literal[...]`, `int | None`) is validated strictly with pydantic, so an editor states its ranges
once, where it takes them; a target may add a classmethod `check_config(cls, values)` for rules
between keys and `check_environment(cls, values)` for what the machine must offer (W&B: a key and
the server), and a dataset adapter lists the protocols it is scored under (`PROTOCOLS`). Groups
that are plain settings (the top level, `protocol`, `model`) have a schema here. A failure is one
`EditbenchError` line naming the key, the value, the rule and the fix.
"""
from __future__ import annotations

import difflib
import inspect
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from editbench.errors import EditbenchError

STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
PositiveFraction = Annotated[float, Field(gt=0, le=1)]


class Retention(BaseModel):
    model_config = STRICT
    mode: Literal["all_so_far"]
    max_eval: PositiveInt | None
    sample_seed: int


class Protocol(BaseModel):
    model_config = STRICT
    name: str
    version: PositiveInt
    scoring: Literal["greedy", "teacher_forced", "free"]
    checkpoints: list[PositiveInt]
    retention: Retention
    locality: Literal["pre_post_agreement"]
    eval_batch_size: PositiveInt
    max_new_tokens: PositiveInt = 512  # free-text probe sets: the generation cap (published 512)


class EditSiteSpec(BaseModel):
    model_config = STRICT
    layer: NonNegativeInt
    module: Annotated[str, Field(min_length=1)]


class GGUFSpec(BaseModel):
    model_config = STRICT
    package: str
    file: str
    # a file shipped in parts: `<package>/<path inside it>` in order, joined once into the cache and
    # checked against sha256 (models/gguf_files.py `_joined_gguf`)
    parts: Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z_]\w*/.+")]], Field(min_length=1)] | None = None
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class TinySpec(BaseModel):
    model_config = STRICT
    arch: Literal["llama", "qwen2", "gemma3_text"]
    vocab_size: Annotated[int, Field(ge=300)]
    hidden_size: PositiveInt
    intermediate_size: PositiveInt
    num_hidden_layers: PositiveInt
    num_attention_heads: PositiveInt
    num_key_value_heads: PositiveInt
    init_seed: int
    add_bos: bool
    extra: dict[str, Any] | None = None  # further keys of the architecture's config (head_dim, sliding_window, ...)


class ModelSpec(BaseModel):
    model_config = STRICT
    name: str
    source: Literal["gguf", "hub", "tiny"]
    gguf: GGUFSpec | None = None
    tiny: TinySpec | None = None
    hf_id: str | None
    revision: str | None
    path: str | None
    dtype: Literal["float32", "float16", "bfloat16"]
    device: Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")]
    device_map: str | dict | None
    chat_template: bool
    system_prompt: str | None
    padding_side: Literal["left"]
    edit_site: EditSiteSpec


TOP_LEVEL = {  # key -> annotation; the groups are checked by their own schema or target
    "n_edits": PositiveInt, "seed": NonNegativeInt, "resume": Literal["auto", "never", "force"], "tag": str,
    "out_dir": Annotated[str, Field(min_length=1)], "threads": PositiveInt | None,
    "cache_dir": Annotated[str, Field(min_length=1)], "cache_max_gb": NonNegativeFloat,
    "save_every_min": NonNegativeFloat, "keep_checkpoints": PositiveInt | Literal["grid"], "diagnostics": bool,
}
GROUPS = ("editor", "model", "data", "protocol", "logger")


def _msg(e: ValidationError) -> tuple[str, str]:
    """(dotted location inside the checked value, pydantic's message in lower case)."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return loc, err["msg"][0].lower() + err["msg"][1:]


def _unknown(key: str, valid) -> str:
    parent, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, list(valid), n=1, cutoff=0.5)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    return f"no config key '{key}' — {hint}valid: {', '.join(sorted(valid))}"


def check_value(key: str, value: Any, annotation: Any, where: str = "") -> None:
    """Validate one value against its annotation (strict: no str -> number, no bool -> int)."""
    try:
        TypeAdapter(annotation, config=None if _is_model(annotation) else STRICT).validate_python(value)
    except ValidationError as e:
        loc, msg = _msg(e)
        full = f"{key}.{loc}" if loc and not loc.isdigit() else key
        if msg.startswith("extra inputs are not permitted"):
            raise EditbenchError(_unknown(full, annotation.model_fields) if _is_model(annotation) else
                                 f"no config key '{full}'") from None
        shown = value if not loc or loc.isdigit() else _dig(value, loc)
        raise EditbenchError(f"{full}={shown!r} is invalid ({msg}) — set a valid {full} on the command line or "
                             f"in {where or 'the config'}") from None


def _is_model(annotation) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


def _dig(value, loc: str):
    for part in loc.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
    return value


def check_target(group: str, entry: dict, given: tuple[str, ...] = ()):
    """A `_target_` group entry: known keys, no missing key, every value valid for its parameter.
    Returns the target."""
    from hydra.utils import get_object

    entry = dict(entry)
    name, target = entry.pop("name", None), entry.pop("_target_", None)
    try:
        fn = get_object(target)
    except Exception:
        raise EditbenchError(f"{group}={name}: _target_ {target!r} cannot be imported — fix the YAML's _target_") from None
    params = {k: p for k, p in inspect.signature(fn).parameters.items()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and k not in given and k != "self"}
    where = f"conf/{group}/{name}.yaml"
    for key in sorted(entry.keys() - params.keys()):
        close = difflib.get_close_matches(key, params, n=1, cutoff=0.5)
        hint = f"did you mean {group}.{close[0]}? " if close else ""
        raise EditbenchError(f"{group}.{key} is not a setting of {group}={name} ({fn.__name__}) — {hint}"
                             f"valid: {', '.join(sorted(params))}")
    missing = [k for k, p in params.items() if p.default is p.empty and k not in entry]
    if missing:
        raise EditbenchError(f"{group}={name} ({fn.__name__}) needs {', '.join(f'{group}.{k}' for k in missing)} — "
                             f"set it in {where} or on the command line")
    hints = _annotations(fn)
    for key, value in entry.items():
        if key in hints:
            check_value(f"{group}.{key}", value, hints[key], where)
    extra = getattr(fn, "check_config", None)
    if callable(extra):
        extra(entry)
    return fn


def _annotations(fn) -> dict:
    import typing

    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception as e:  # an unresolvable annotation is a bug in the target, not bad input
        raise RuntimeError(f"cannot read the annotations of {fn}: {e}") from e


def check_config(cfg: dict) -> None:
    """Check a resolved config (`OmegaConf.to_container(cfg, resolve=True)`, no `hydra` node)."""
    known = set(TOP_LEVEL) | set(GROUPS) | {"editor_model", "experiment", "local"}
    for key in sorted(cfg.keys() - known):
        raise EditbenchError(_unknown(key, TOP_LEVEL.keys() | set(GROUPS)) + " (see `python -m editbench --cfg job`)")
    for key, ann in TOP_LEVEL.items():
        if key not in cfg:
            raise EditbenchError(f"the config has no '{key}' — restore it in your config (see `python -m editbench --cfg job`)")
        check_value(key, cfg[key], ann)
    for key in GROUPS:
        if not isinstance(cfg.get(key), dict):
            raise EditbenchError(f"the config has no '{key}' group — pick one with {key}=<name> (see `editbench ls {key}`)")
    check_value("protocol", cfg["protocol"], Protocol, f"conf/protocol/{cfg['protocol'].get('name')}.yaml")
    check_value("model", cfg["model"], ModelSpec, f"conf/model/{cfg['model'].get('name')}.yaml")
    model = cfg["model"]
    if model["source"] == "gguf" and not model.get("gguf"):
        raise EditbenchError(f"model={model['name']}: source gguf needs model.gguf.package and model.gguf.file")
    if model["source"] == "gguf" and model["gguf"].get("parts") and not model["gguf"].get("sha256"):
        raise EditbenchError(f"model={model['name']}: a GGUF in parts (model.gguf.parts) needs model.gguf.sha256, "
                             f"the joined file's checksum — set it in conf/model/{model['name']}.yaml")
    if model["source"] == "tiny" and not model.get("tiny"):
        raise EditbenchError(f"model={model['name']}: source tiny needs the model.tiny settings")
    if model["source"] == "hub" and not (model.get("path") or model.get("hf_id")):
        raise EditbenchError(f"model={model['name']}: source hub needs model.hf_id or model.path")
    if model["source"] == "tiny" and model.get("path"):
        raise EditbenchError(f"model.path={model['path']}: model={model['name']} is a tiny random model built from "
                             f"its config, it reads no files — drop model.path, or pick a model that loads one")
    data = check_target("data", cfg["data"])
    supported, protocol = getattr(data, "PROTOCOLS", None), cfg["protocol"]["name"]
    if supported is not None and protocol not in supported:
        raise EditbenchError(f"data={cfg['data'].get('name')} is scored under protocol {' or '.join(supported)}, not "
                             f"{protocol} (its rows would carry a protocol that did not score them) — use "
                             f"protocol={supported[0]}")
    check_target("editor", cfg["editor"], given=("model",))
    check_target("logger", cfg["logger"])


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_environment(cfg: dict) -> None:
    """What this machine must offer the config: CUDA if asked for, the CPU threads asked for, a
    model path that holds a model, what a target's `check_environment` asks, somewhere to write."""
    from hydra.utils import get_object

    model = cfg["model"]
    if model["device"].startswith("cuda") and not _cuda_available():
        import torch

        build = "a CPU-only build" if torch.version.cuda is None else "no visible CUDA device"
        raise EditbenchError(f"model.device={model['device']} but torch {torch.__version__} has {build} — use "
                             f"model.device=cpu (or auto), or install a CUDA build of torch on a GPU machine")
    threads, cpus = cfg.get("threads"), _usable_cpus()
    if threads and threads > cpus:
        raise EditbenchError(f"threads={threads} is more than the {cpus} CPUs this process may use — use "
                             f"threads={cpus} or fewer (threads=null: torch's default)")
    if model["source"] == "gguf" and model.get("path"):
        p, file = Path(model["path"]).expanduser(), model["gguf"]["file"]
        if not (p.is_file() or (p / file).is_file()):
            raise EditbenchError(f"model.path={model['path']} is neither a GGUF file nor a folder holding {file} — "
                                 f"point it at one, or drop model.path to load {file} from the package "
                                 f"{model['gguf']['package']}")
    if model["source"] == "gguf" and not model.get("path") and model["gguf"].get("parts"):
        from omegaconf import OmegaConf

        from editbench.models.gguf_files import gguf_part_paths

        gguf_part_paths(OmegaConf.create(model["gguf"]))  # every part installed, or one line naming the install
    if model["source"] == "hub" and model.get("path"):
        p = Path(model["path"]).expanduser()
        if not p.is_dir():
            raise EditbenchError(f"model.path={model['path']} is not a directory — point it at a local copy of "
                                 f"{model.get('hf_id') or 'the model'} (a folder with config.json and weights)")
        if not (p / "config.json").is_file():
            raise EditbenchError(f"model.path={model['path']} holds no config.json — point it at a transformers "
                                 f"checkpoint folder (e.g. from `huggingface-cli download {model.get('hf_id') or '<id>'}`)")
    for group in ("data", "editor", "logger"):
        hook = getattr(get_object(cfg[group]["_target_"]), "check_environment", None)
        if callable(hook):
            hook({k: v for k, v in cfg[group].items() if k not in ("_target_", "name")})
    for key in ("out_dir", "cache_dir"):
        where = Path(cfg[key]).expanduser()
        base = where
        while not base.exists() and base != base.parent:
            base = base.parent
        if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
            raise EditbenchError(f"{key}={cfg[key]} cannot be written ({base} is not a writable directory) — choose a "
                                 f"writable {key}=<path>")


SAFE_NAME = re.compile(r"[^A-Za-z0-9._%+-]")


def run_dir_suffix(override_dirname: str, limit: int = 64) -> str:
    """The run directory's name after `n{N}_s{seed}`: the overrides, shell-safe and short.

    Hydra joins them as `k=v,k2=v2`; here `=` becomes `-`, `,` becomes `+`, `/` becomes `%`, and any
    other character outside [A-Za-z0-9._%+-] (brackets, spaces, quotes, globs) becomes `_`. Past
    `limit` characters the tail is replaced by a hash of the whole, so two runs never share a
    directory by truncation; the full overrides are in the run's `.hydra/overrides.yaml`."""
    import hashlib

    if not override_dirname:
        return ""
    s = SAFE_NAME.sub("_", override_dirname.replace("=", "-").replace(",", "+").replace("/", "%"))
    if len(s) > limit:
        s = s[:limit - 12] + "-h" + hashlib.sha1(override_dirname.encode()).hexdigest()[:10]
    return "_" + s
