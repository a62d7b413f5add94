import subprocess
import sys

from mammo_pipeline.definitions import build_definitions


def test_definitions_load_and_every_job_resolves():
    defs = build_definitions()
    repo = defs.get_repository_def()
    for job in repo.get_all_jobs():
        assert job.name
    assert "mammo" in defs.resources


def test_cli_every_subcommand_has_help():
    from click.testing import CliRunner

    from mammo_pipeline.cli import cli

    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0
    for name, command in cli.commands.items():
        assert name in top.output
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert "Example:" in (command.help or ""), f"{name} help lacks an Example: block"


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "mammo_pipeline", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "mammo" in out.stdout
