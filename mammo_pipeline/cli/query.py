"""`mammo query`: read-only SQL over the warehouse views (DuckDB, in process; see read_only_query)."""

from __future__ import annotations

import click
import duckdb

from mammo_pipeline import warehouse
from mammo_pipeline.read_only_query import ReadOnlyViolation, run_read_only
from mammo_pipeline.settings import Settings

# The tables and views named in --help are the warehouse's own lists, so a new table cannot be left out of it.
HELP = f"""Run read-only SQL over the warehouse tables and print the result.

Tables: {", ".join(warehouse.TABLES)}; {" and ".join(warehouse.HISTORY)} hold every model's rows, the views
{" and ".join(warehouse.CURRENT_VIEWS)} each hospital's current model's; the reports (prediction_summary,
prediction_counts, metadata_completeness) once their assets ran. Only SELECT-like statements run;
files outside the warehouse tables, the network, ATTACH and extensions are off (COPY, INSTALL,
read_text('/etc/passwd') fail).

\b
Example:
    mammo query "SELECT hospital, predicted_class, count(*) FROM image_predictions_current GROUP BY ALL"
    mammo query "SELECT * FROM model_registry" --format json
"""


@click.command("query", help=HELP)
@click.argument("sql")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
def command(sql: str, fmt: str) -> None:
    """Print what read-only SQL over the warehouse views returns (`HELP` is the --help text)."""
    settings = Settings.existing()
    try:
        df = run_read_only(settings, sql)
    except ReadOnlyViolation as e:
        raise click.ClickException(str(e)) from e
    except duckdb.Error as e:
        with warehouse.connect(settings) as con:  # every view the query could read, the *_current ones too
            names = sorted(warehouse.views(con))
        raise click.ClickException(f"query failed: {e}\nTables: {', '.join(names) or 'none yet'}") from e
    if fmt == "csv":
        click.echo(df.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(df.to_json(orient="records", date_format="iso", indent=2))
    else:
        click.echo(df.to_string(index=False) if len(df) else f"(no rows; columns: {', '.join(df.columns)})")
