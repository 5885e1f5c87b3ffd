"""`hetagent engine serve` refuses bad input with one line and exit status 2."""

from typer.testing import CliRunner

from hetagent.backends.local.engine.cli import app


def test_serve_unknown_model_says_how_to_fix_it():
    result = CliRunner().invoke(app, ["serve", "--model", "no-such-model"])
    assert result.exit_code == 2
    assert "no-such-model" in result.output
    assert "Traceback" not in result.output


def test_serve_rejects_a_bad_port():
    result = CliRunner().invoke(app, ["serve", "--port", "70000"])
    assert result.exit_code == 2
    assert "--port" in result.output


def test_serve_rejects_an_unknown_policy():
    result = CliRunner().invoke(
        app, ["serve", "--model", "dummy:smollm2-135m", "--kv-retention", "x"]
    )
    assert result.exit_code == 2
    assert "unknown kv_retention policy" in result.output
