"""The YAML rules language: schema, loading with line-numbered errors, and the compiled RuleSet.

A rules file says which profile options apply, which instances are accepted and forwarded, and
per-scope transformations that override the profile for the elements they name. research-pacs-on-aws
de-identifier configs are accepted too (see `research_pacs`). `docs/rules.md` is the reference.

Rooms: `source` (YAML with line numbers, RulesError), `schema` (the JSON Schema), `model` (RuleSet
and what it holds), `compile` (a parsed file to a RuleSet), `research_pacs` (the research-pacs
dialect), `tagpattern` and `query` (the two small languages rules use).
"""

from .compile import compile_rules, load_rules, load_rules_text, transcode_supported
from .model import ALL_LABEL, AddTag, BurnedInRule, ElementRule, InstancePlan, RuleSet, Scope, Transformation
from .schema import schema_problems
from .source import RulesError, line_for, parse_yaml

__all__ = [
    "ALL_LABEL",
    "AddTag",
    "BurnedInRule",
    "ElementRule",
    "InstancePlan",
    "RuleSet",
    "RulesError",
    "Scope",
    "Transformation",
    "compile_rules",
    "line_for",
    "load_rules",
    "load_rules_text",
    "parse_yaml",
    "schema_problems",
    "transcode_supported",
]
