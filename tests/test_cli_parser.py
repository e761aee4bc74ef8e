"""The ``featx`` command's parser: global flags on either side of the subcommand, and the
choices and defaults it shows taken from the config declarations, never typed again."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from featx.cli import build_parser, main
from featx.core import log
from featx.core.config import DEFAULT_CACHE_DIR, EXPORT_FORMATS, SHORTHANDS, Config

# The least each subcommand takes (its positionals and required flags): every subcommand
# must be here, so a new one is tested too.
MINIMAL_ARGS = {
    "init": ["data"], "extract": [], "classify": [], "finetune": [], "backbones": [],
    "export-model": ["model", "--format", "onnx", "--out", "m.onnx"],
    "layers": ["MobileNetV2"],
    "cache ls": [], "cache info": ["abc"], "cache verify": [], "cache rm": ["abc"],
    "cache export": ["abc", "--format", "npy", "--out", "x"], "predict": ["model", "a.png"],
    "explain": ["model", "a.png"], "sweep": [], "audit": [], "runs": [], "demo-data": [],
}
# Flags with choices that override no config field: the config declaration they show.
NOT_FIELDS = {"format": EXPORT_FORMATS}


def _parsers(parser: argparse.ArgumentParser, path: str = ""
             ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser under ``parser`` with its command words ("" for the main one)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}".strip())


def _leaf_commands() -> list[str]:
    return [path for path, p in _parsers(build_parser())
            if path and not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]


def _field(dotted: str) -> tuple[Any, dataclasses.Field]:
    """A config field's default and declaration, found on its own (not through featx.cli)."""
    *sections, name = dotted.split(".")
    owner: Any = Config()
    for section in sections:
        owner = getattr(owner, section)
    return getattr(owner, name), {f.name: f for f in dataclasses.fields(owner)}[name]


def _options() -> Iterator[tuple[str, argparse.Action]]:
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            if action.option_strings:
                yield path, action


def test_every_subcommand_is_covered():
    assert sorted(_leaf_commands()) == sorted(MINIMAL_ARGS)


@pytest.mark.parametrize("command", sorted(MINIMAL_ARGS))
@pytest.mark.parametrize("flag,dest", [("-q", "quiet"), ("--quiet", "quiet"),
                                       ("-v", "verbose"), ("--verbose", "verbose")])
def test_global_flags_before_or_after_the_subcommand(command, flag, dest):
    words = command.split()
    parser = build_parser()
    other = "verbose" if dest == "quiet" else "quiet"
    for argv in ([flag, *words, *MINIMAL_ARGS[command]], [*words, *MINIMAL_ARGS[command], flag]):
        args = parser.parse_args(argv)
        assert getattr(args, dest) is True, argv
        assert getattr(args, other) is False, argv  # present, not overwritten, not set
    plain = parser.parse_args([*words, *MINIMAL_ARGS[command]])
    assert plain.quiet is False and plain.verbose is False


def test_a_flag_before_is_not_undone_by_the_subcommand():
    # argparse copies a subcommand's namespace over the main one: its defaults must not
    # replace what was given before it
    args = build_parser().parse_args(["-q", "cache", "-v", "ls"])
    assert args.quiet is True and args.verbose is True


@pytest.mark.parametrize("argv,level", [
    (["-q", "backbones"], logging.WARNING),
    (["backbones", "-q"], logging.WARNING),
    (["backbones", "--verbose"], logging.DEBUG),
    (["-q", "runs", "--cache-dir", "{tmp}"], logging.WARNING),
    (["runs", "--cache-dir", "{tmp}", "-q"], logging.WARNING),
    (["runs", "-v", "--cache-dir", "{tmp}"], logging.DEBUG),
    (["cache", "ls", "--cache-dir", "{tmp}", "-q"], logging.WARNING),
    (["cache", "-v", "verify", "--cache-dir", "{tmp}"], logging.DEBUG),
    (["-v", "extract", "--data", "{tmp}/none", "--cache-dir", "{tmp}"], logging.DEBUG),
    (["extract", "--data", "{tmp}/none", "--cache-dir", "{tmp}", "--quiet"], logging.WARNING),
    (["extract", "--data", "{tmp}/none", "--cache-dir", "{tmp}"], logging.INFO),
], ids=lambda v: " ".join(v) if isinstance(v, list) else logging.getLevelName(v))
def test_main_shows_the_level_asked_for_wherever_the_flag_stands(argv, level, tmp_path,
                                                                  monkeypatch, capsys):
    """In-process: the level featx's log handler is set to while the command runs (none of
    these commands loads TensorFlow; the extract ones stop at the missing data folder)."""
    levels: list[int] = []
    set_level = log.HANDLER.setLevel
    monkeypatch.setattr(log.HANDLER, "setLevel",
                        lambda value: (levels.append(value), set_level(value))[1])
    before = log.HANDLER.level
    code = main([word.format(tmp=tmp_path) for word in argv])
    assert code == (2 if "extract" in argv else 0), capsys.readouterr().err
    assert levels and levels[0] == level
    assert log.HANDLER.level == before  # restored after the command


def test_every_choice_is_the_config_declaration():
    """A flag's choices are the ``one_of`` of the config field it overrides (or, for a flag
    over no field, the tuple config declares for it): never a list typed again."""
    seen = set()
    for path, action in _options():
        if action.choices is None:
            continue
        if action.dest in SHORTHANDS:
            expected = _field(SHORTHANDS[action.dest])[1].metadata.get("one_of")
        else:
            expected = NOT_FIELDS.get(action.dest)
        assert expected is not None, f"featx {path} {action.option_strings[0]}: choices that " \
                                     "config does not declare"
        assert list(action.choices) == list(expected), f"featx {path} {action.option_strings}"
        seen.add(action.dest)
    assert {"pooling", "runtime", "engine", "format"} <= seen


def test_every_flag_over_a_field_with_allowed_values_offers_them():
    """The other way round: a flag over a ``one_of`` field lists its values, as choices or
    (a comma-separated list field) in its help."""
    for path, action in _options():
        if action.dest not in SHORTHANDS:
            continue
        default, spec = _field(SHORTHANDS[action.dest])
        allowed = spec.metadata.get("one_of")
        if not allowed:
            continue
        if isinstance(default, list):
            assert action.choices is None and all(v in action.help for v in allowed), path
        else:
            assert list(action.choices) == list(allowed), path
        if action.dest == "runtime":  # its help says what each runtime is
            assert all(v in action.help for v in allowed), path


def test_export_formats_declared_in_config_are_the_exporters():
    from featx.store.export import FORMATS

    assert tuple(FORMATS) == EXPORT_FORMATS


def test_pipeline_flags_default_to_none_and_quote_the_fields_default():
    """A pipeline flag never carries a default of its own (the pipeline's value stands); the
    defaults its help quotes are the config field's."""
    args = build_parser().parse_args(["extract"])
    for flag in SHORTHANDS:
        assert getattr(args, flag, None) in (None, False, [], ""), flag
    help_of = {a.dest: a.help for path, a in _options() if path == "extract"}
    assert help_of["pooling"].endswith(f"(default {_field('backbone.pooling')[0]})")
    assert help_of["batch_size"].endswith(f"(default {_field('extract.batch_size')[0]})")
    assert DEFAULT_CACHE_DIR in help_of["cache_dir"]
    layers = build_parser().parse_args(["layers", "MobileNetV2"])
    assert layers.input_size == _field("backbone.input_size")[0]


def test_help_shows_the_global_flags_on_every_subcommand(capsys):
    for command in MINIMAL_ARGS:
        with pytest.raises(SystemExit):
            main([*command.split(), "--help"])
        out = capsys.readouterr().out
        assert "-q, --quiet" in out and "-v, --verbose" in out, command
