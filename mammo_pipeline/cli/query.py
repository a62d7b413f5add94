"""`mammo query`: SQL over the warehouse views (DuckDB, in process)."""

from __future__ import annotations

import click
import duckdb

from mammo_pipeline import warehouse
from mammo_pipeline.settings import Settings


@click.command("query")
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
    """Run SQL over the warehouse tables (dicom_index, image_cache, labels, model_registry, model_promotions,
    image_predictions and study_predictions with every model's rows, image_predictions_current and
    study_predictions_current with each hospital's current model) and print the result.

    \b
    Example:
        mammo query "SELECT hospital, predicted_class, count(*) FROM image_predictions_current GROUP BY ALL"
        mammo query "SELECT * FROM model_registry" --format json
    """
    settings = Settings.from_env()
    try:
        df = warehouse.query(settings, sql)
    except duckdb.Error as e:
        tables = [t for t in warehouse.TABLES if warehouse.table_glob(settings, t)]
        raise click.ClickException(f"query failed: {e}\nTables: {', '.join(tables) or 'none yet'}") from e
    if fmt == "csv":
        click.echo(df.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(df.to_json(orient="records", date_format="iso", indent=2))
    else:
        click.echo(df.to_string(index=False) if len(df) else f"(no rows; columns: {', '.join(df.columns)})")
