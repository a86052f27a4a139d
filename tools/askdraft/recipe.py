"""`askdraft recipe`: a recipe with profile files and key=value overrides applied, written as
a new YAML for `axolotl train` (what `make` runs on a CPU or in the smoke profile)."""
import importlib.util
import math
import re
import sys
from pathlib import Path

import yaml

from askdraft import REPO_ROOT
from askdraft.io import InputError, atomic_open, positive_int

PROFILE_DIR = REPO_ROOT / "recipes" / "profiles"
BOOL = "tag:yaml.org,2002:bool"


class OverrideLoader(yaml.SafeLoader):
    """YAML for --set values with YAML 1.2 booleans: only true / false (any case) are booleans,
    so `save_strategy=no` stays the string "no" (YAML 1.1, PyYAML's default, reads yes / no /
    on / off / y / n as booleans). Everything else is PyYAML's safe loading."""


OverrideLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
OverrideLoader.add_implicit_resolver(BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def override_value(text):
    """The value of a --set key=value: YAML (numbers, lists, mappings, null) with 1.2 booleans."""
    try:
        return yaml.load(text, Loader=OverrideLoader)
    except yaml.YAMLError as e:
        raise InputError("<command line>", None, f"--set value {text!r} is not valid YAML: {e}") from None


def load_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "file not found")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise InputError(path, None if line is None else line + 1, f"malformed YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise InputError(path, 1, "a recipe is a YAML mapping")
    return cfg


def compose(recipe, profiles=(), overrides=()):
    """The recipe with each profile's keys and then the key=value overrides applied. A profile key
    is a recipe key (its value replaces the recipe's) or, like an override, a dotted path to one
    field inside it: `askdraft_schedule.1.cal: published` changes that one field of entry 1."""
    cfg = load_yaml(recipe)
    for prof in profiles:
        path = Path(prof) if Path(prof).suffix else PROFILE_DIR / f"{prof}.yaml"
        for key, value in load_yaml(path).items():
            set_key(cfg, str(key), value, path)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError("<command line>", None, f"override {item!r} is not key=value")
        set_key(cfg, key, override_value(value))
    check_plugins(cfg, recipe)
    return cfg


def check_plugins(cfg, recipe):
    """Every `plugins:` entry's module is importable: Axolotl 0.19 logs a plugin it cannot import
    and trains without it (a phase C without askdraft_dpo would be TRL's plain DPO)."""
    for name in cfg.get("plugins") or []:
        module = str(name).rpartition(".")[0]
        try:
            found = bool(module) and importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise InputError(recipe, None, f"plugin {name!r}: no module {module!r} here (installed? spelled right?); "
                             "Axolotl would train without it")


def set_key(cfg, dotted, value, source=None):
    """cfg[a][b]... = value for a dotted key; list items by index: `datasets.0.path=data/x.jsonl`.
    source: the profile file the key comes from (errors name it), else the command line's --set."""
    parts = dotted.split(".")
    node = cfg
    where_from, what = (source, f"key {dotted}") if source else ("<command line>", f"--set {dotted}")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the recipe"
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise InputError(where_from, None, f"{what}: {where} has no item {part!r}")
            part = int(part)
        elif not isinstance(node, dict):
            raise InputError(where_from, None, f"{what}: {where} is not a mapping or list")
        if i == len(parts) - 1:
            node[part] = value
        else:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]


def pack_keys(mean_tokens, rows_per_pack, base_len, rows_per_step):
    """sequence_len, micro and accumulation for packs of ~rows_per_pack rows of mean_tokens tokens,
    rows_per_step rows an optimizer step as before (packs are filled to sequence_len, so a pack of
    rows averaging mean_tokens holds about rows_per_pack of them)."""
    return {"sequence_len": max(base_len, 64 * math.ceil(rows_per_pack * mean_tokens / 64)), "micro_batch_size": 1,
            "gradient_accumulation_steps": max(1, rows_per_step // rows_per_pack)}


def packed(cfg, rows_per_pack):
    """cfg with pack_keys from its own data (the first dataset, tokenised by base_model's tokenizer)."""
    from askdraft.bench.inputs import mean_tokens
    if not cfg.get("sample_packing"):
        raise InputError("--pack-rows", None, "the recipe does not set sample_packing: true (add --profile gpu-7b-fast)")
    data = Path(cfg["datasets"][0]["path"])
    if not data.is_file():
        raise InputError(data, None, "--pack-rows: the recipe's dataset is missing (run `make sft`)")
    rows_per_step = cfg["micro_batch_size"] * cfg["gradient_accumulation_steps"]
    return {**cfg, **pack_keys(mean_tokens(data, cfg["base_model"], "SFT"), rows_per_pack, cfg["sequence_len"], rows_per_step)}


def write(cfg, out, source):
    with atomic_open(out) as f:
        f.write(f"# generated by: askdraft recipe {' '.join(sys.argv[2:])}\n# from {source}\n")
        yaml.safe_dump(cfg, f, sort_keys=False)


def cmd(args):
    cfg = compose(args.recipe, args.profile, args.set)
    write(packed(cfg, args.pack_rows) if args.pack_rows else cfg, args.out, args.recipe)
    print(args.out)


def add_cli(sub):
    p = sub.add_parser("recipe", help="apply profiles (recipes/profiles/*.yaml) and key=value overrides to a recipe")
    p.add_argument("recipe")
    p.add_argument("--profile", action="append", default=[], help="profile name or YAML file; repeatable")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="repeatable; dotted keys reach into mappings and lists (datasets.0.path=...)")
    p.add_argument("--pack-rows", type=positive_int, metavar="N",
                   help="sample packing: size packs to hold N rows of the recipe's data (sequence_len from their "
                        "mean tokens), micro 1, accumulation so that a step keeps its rows (gpu-7b-fast: 32)")
    p.add_argument("-o", "--out", required=True)
    p.set_defaults(func=cmd)
