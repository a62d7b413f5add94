from mammo_pipeline.cli import cli

cli()
