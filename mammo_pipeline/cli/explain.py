"""`mammo explain SOP_UID`: the current model's heat maps for one cached image, as a PNG."""

from __future__ import annotations

from pathlib import Path

import click

from mammo_pipeline.atomic import write_bytes
from mammo_pipeline.cli.output import output_file
from mammo_pipeline.settings import Settings


def _hospital_of(settings: Settings, sop_instance_uid: str) -> str:
    """The hospital whose image_cache manifest lists the image (click error when none or several do)."""
    import pandas as pd

    found = []
    for manifest in sorted(settings.table_dir("image_cache").glob("hospital=*/manifest.parquet")):
        uids = pd.read_parquet(manifest, columns=["sop_instance_uid"])["sop_instance_uid"]
        if (uids == sop_instance_uid).any():
            found.append(manifest.parent.name.removeprefix("hospital="))
    if len(found) != 1:
        where = "no hospital's image cache" if not found else f"several hospitals ({', '.join(found)}); pass --hospital"
        raise click.ClickException(f"image {sop_instance_uid} found in {where}")
    return found[0]


@click.command("explain")
@click.argument("sop_instance_uid")
@click.option("--hospital", default="", help="The image's hospital (looked up in the image cache when omitted).")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=output_file,
    default=None,
    help="PNG to write.",
)
def command(sop_instance_uid: str, hospital: str, out: Path | None) -> None:
    """Write where the current model saw each flag to a PNG (the biopsy flag: the second look's candidates, or an
    object occlusion; magnification: Guided Grad-CAM).

    \b
    Example:
        mammo explain 1.2.826.0.1.3680043.8.498.123 --out explain.png
    """
    from mammo_pipeline.model.explain import heatmap_png
    from mammo_pipeline.model.second_look_model import SecondLookMismatch

    settings = Settings.from_env()
    hospital = hospital or _hospital_of(settings, sop_instance_uid)
    try:
        png = heatmap_png(settings, hospital, sop_instance_uid)
    except (FileNotFoundError, KeyError, SecondLookMismatch) as err:  # the mismatch says what to do: one line
        raise click.ClickException(str(err)) from err
    path = out or settings.reports / "explain" / f"{sop_instance_uid}.png"
    write_bytes(path, png)
    click.echo(f"wrote {path}")
