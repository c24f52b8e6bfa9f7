"""What the command line adds to a run: the named targets (Snakefile: tasks, figures, tables,
explorer), and the typed values of `--config` dictionaries, which Snakemake leaves as strings."""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["named_target_of", "readable", "readable_params", "report_config_problem"]
__all__ += ["substitute_announcements", "type_config_overrides", "typed_value", "yaml_scalar"]

FIGURE_SUFFIXES = (".pdf", ".png")
TABLE_SUFFIXES = (".csv", ".html")


def named_target_of(path: str) -> str | None:
    """The named target that builds the output `path` of `all`: "figures" (a pdf or png),
    "explorer" (a page under results/explorer/), "tables" (a csv or html under a tables/
    folder), or None (a store, a record: only `all` names it)."""
    if path.endswith(FIGURE_SUFFIXES):
        return "figures"
    if path.startswith("results/explorer/"):
        return "explorer"
    if "/tables/" in path and path.endswith(TABLE_SUFFIXES):
        return "tables"
    return None


def yaml_scalar(text: str) -> Any:
    """A string as YAML reads it when it is a boolean, a number or null ("false" -> False,
    "3" -> 3, "1.5e-3" -> 0.0015); any other string unchanged."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return text


def typed_value(value: Any) -> Any:
    """A dictionary or list as `--config` gives it, with its strings read by yaml_scalar."""
    if isinstance(value, dict):
        return {key: typed_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed_value(item) for item in value]
    if isinstance(value, str):
        return yaml_scalar(value)
    return value


def type_config_overrides(config: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Give the merged config the typed values of the `--config` entries (in place).

    Snakemake reads a `--config key=value` value as an int, a float or a boolean, else with
    YAML's BaseLoader, which keeps every value inside a dictionary or list a string:
    `engine={"attribution": false}` arrives as {"attribution": "false"}, which the schema
    refuses ("'false' is not of type 'boolean'"). A string the config still holds where the
    entry put it is read as YAML would read it in a config file; top-level strings stay (Snakemake
    has already tried the number and boolean readings).

    Args:
        config: the workflow config, the config files and `--config` merged by Snakemake.
        overrides: the `--config` entries alone, as Snakemake parsed them.
    """
    for key, value in overrides.items():
        if isinstance(value, (dict, list)):
            _type_nested(config, key, value)


def _type_nested(parent: dict[str, Any], key: str, value: Any) -> None:
    current = parent.get(key)
    if isinstance(value, dict) and isinstance(current, dict):
        for name, item in value.items():
            _type_nested(current, name, item)
    elif current == value:
        parent[key] = typed_value(value)


def substitute_announcements(
    figure_targets: dict[str, Any], mechanism_targets: dict[str, list[Any]], planned: set[str]
) -> list[str]:
    """The lines the run prints before its first job, one per figure target showing a
    substitute whose figure this run builds: the targets (FigureTarget) by their figure's rule
    name, as figure_targets and mechanism_targets give them, and the names of the planned jobs'
    rules. A run building none of these figures (`snakemake tasks`, a finished run) prints none.
    """
    targets = [t for rule, t in figure_targets.items() if rule in planned]
    targets += [t for rule, ts in mechanism_targets.items() if rule in planned for t in ts]
    return [f"{t.key}: {t.announcement()}" for t in targets if t.substituted]


# results/ folders that are no model's (results/<model>/ holds a model's stores).
SHARED_RESULTS = frozenset({"explorer", "figures", "tables", "logs", "benchmarks"})


def report_config_problem(
    models: list[str], entries: list[str], folders: list[str], configfiles: list[str]
) -> str | None:
    """The one-line refusal of `snakemake --report` when results/ holds another run's models:
    some of this config's models have no results/<model>/ while other models' folders are
    there (the run's --configfile is missing or another's); None when the config fits.

    Args:
        models: the config's models (MODELS); entries: with their checkpoints (ENTRIES).
        folders: the names of the folders in results/.
        configfiles: the config files Snakemake read (empty: only config/config.yaml).
    """
    present = set(folders) - SHARED_RESULTS
    missing = [m for m in models if m not in present]
    others = sorted(present - set(entries))
    if not missing or not others:
        return None
    given = " ".join(configfiles) or "config/config.yaml (no --configfile)"
    return (
        f"snakemake --report: results/ holds {', '.join(others)}, which {given} does not name, "
        f"and lacks {', '.join(missing)}, which it does: give the run's config files, e.g. "
        "snakemake --report report.zip --configfile config/demo.yaml"
    )


# The report's "job parameters" panel: the params a job's script reads, but for its caption,
# which the report shows rendered above the panel.
HIDDEN_PARAMS = frozenset({"caption"})


def readable(value: Any, nested: bool = False) -> str:
    """A rule's param as the report's panel prints it: lists joined with commas (a list of
    lists: its items' words, e.g. "tiny-gpt2 resample, tiny-pythia resample"), mappings as
    "key value" pairs (in parentheses inside another), None and empty lists as "none", numbers
    short (0.05, 65536), markdown's ** dropped."""
    if value is None or value in ([], (), {}):
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value.replace("**", "")
    if isinstance(value, dict):
        text = ", ".join(f"{key} {readable(item, True)}" for key, item in value.items())
        return f"({text})" if nested else text
    if isinstance(value, (list, tuple)):
        if all(isinstance(item, (list, tuple)) for item in value):
            return ", ".join(" ".join(readable(part, True) for part in item) for item in value)
        return ", ".join(readable(item, True) for item in value)
    return str(value)


def readable_params(params: Any, omit_keys: Any = None, omit_values: Any = None) -> str:
    """A job's params as the report's panel prints them ("name: value; ..."), the caption left
    out: in place of Snakemake's format_dict (str() of each value), in --report runs only."""
    omit = HIDDEN_PARAMS | set(omit_keys or ())
    shown = [(name, value) for name, value in params.items() if name not in omit]
    return "; ".join(f"{name}: {readable(value)}" for name, value in shown)
