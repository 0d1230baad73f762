"""One spelling for methods and their options in every command: ``TRANSFORM:METHOD`` and
``--option [METHOD.]NAME=VALUE``; the older ``TRANSFORM(METHOD)`` and ``--options JSON`` still work, with a note."""

from __future__ import annotations

import pytest

from fxai.app import cli
from fxai.app import roar as roar_cli
from fxai.app.cli_methods import method_names, parse_methods, parse_options
from fxai.app.loading import UsageError


def test_methods_and_options_parse_the_same_in_both_spellings(capsys):
    assert method_names("gradient, smoothgrad_sq:gradient") == ["gradient", "smoothgrad_sq:gradient"]
    assert capsys.readouterr().err == ""
    assert method_names("gradient,smoothgrad_sq(gradient)") == ["gradient", "smoothgrad_sq:gradient"]
    assert "note: --method smoothgrad_sq(gradient): write smoothgrad_sq:gradient" in capsys.readouterr().err
    new = parse_options(["steps=16", "smoothgrad_sq:gradient.samples=4", "window=8,8"])
    assert new == {"steps": 16, "smoothgrad_sq:gradient": {"samples": 4}, "window": (8, 8)}
    old = parse_options([], legacy_json='{"smoothgrad_sq(gradient)": {"samples": 4}}')
    assert old == {"smoothgrad_sq:gradient": {"samples": 4}}
    assert "--option smoothgrad_sq(gradient).samples=4" in capsys.readouterr().err
    (row,) = parse_methods("smoothgrad_sq:gradient", new)
    assert row.name == "smoothgrad_sq(gradient)"
    with pytest.raises(UsageError, match="METHOD.NAME=VALUE"):
        parse_options(["steps"])


def _roar_config(*argv):
    return roar_cli._config(cli._parser().parse_args(["roar", "--quick", *argv]))


def test_roar_takes_the_options_of_explain(capsys):
    a = _roar_config("--method", "gradient,smoothgrad_sq:gradient,integrated_gradients,random",
                     "--option", "steps=8", "--option", "smoothgrad_sq:gradient.samples=3")
    b = _roar_config("--methods", "gradient,smoothgrad_sq(gradient),integrated_gradients,random",
                     "--options", '{"integrated_gradients": {"steps": 8}, "smoothgrad_sq(gradient)": {"samples": 3}}')
    assert a == b
    assert a.methods == ("gradient", "smoothgrad_sq(gradient)", "integrated_gradients", "random")
    assert a.options == {"integrated_gradients": {"steps": 8}, "smoothgrad_sq(gradient)": {"samples": 3}}
    assert "note:" in capsys.readouterr().err
    with pytest.raises(UsageError, match="none of the chosen methods"):
        _roar_config("--method", "gradient,random", "--option", "num_masks=10")
    with pytest.raises(UsageError, match="does not take 'steps'"):
        _roar_config("--method", "gradient,random", "--option", "gradient.steps=10")


def test_explain_refuses_an_option_for_a_method_not_chosen(tmp_path, capsys):
    code = cli.main(["explain", str(tmp_path / "none.png"), "--method", "gradient", "--option", "rise.num_masks=4"])
    assert code == 2 and "'rise' is not among the chosen methods" in capsys.readouterr().err
