"""`mammo synth`: write synthetic hospital drops (DICOM) with their ground truth kept apart."""

from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm

from mammo_pipeline.synth import generate_drops
from mammo_pipeline.synth.contact_sheet import make_contact_sheet


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--hospitals", type=click.IntRange(min=0), default=3, show_default=True, help="Hospitals in total.")
@click.option("--studies-per-hospital", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--scale",
    type=click.FloatRange(0, 1, min_open=True),
    default=1.0,
    show_default=True,
    help="Image size relative to the vendor matrix (0.25 for demos).",
)
@click.option(
    "--corrupt-fraction",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of extra broken files (truncated, not DICOM, no pixels, not MG).",
)
@click.option("--drop", default=None, help="Drop folder name [default: drop-YYYYMMDD, today].")
@click.option("--only", multiple=True, help="Only these hospital slugs get the drop (repeatable).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="0 = one per core.")
@click.option(
    "--contact-sheet",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a labelled PNG: one example per vendor profile x class.",
)
@click.option("-s", "--silent", is_flag=True, help="No progress bar.")
def command(
    out: Path,
    hospitals: int,
    studies_per_hospital: int,
    seed: int,
    scale: float,
    corrupt_fraction: float,
    drop: str | None,
    only: tuple[str, ...],
    workers: int,
    contact_sheet: Path | None,
    silent: bool,
) -> None:
    """Write synthetic hospital drops to OUT/<hospital>/<drop>/ and the truth to OUT/_truth/.

    Re-running with another --drop adds a drop; a larger --hospitals adds hospitals.

    \b
    Example:
        mammo synth landing --hospitals 3 --studies-per-hospital 60 --scale 0.25 --seed 0
        mammo synth landing --hospitals 4 --studies-per-hospital 20 --scale 0.25 --drop drop-2 --only st-georges-tooting
    """
    with tqdm(desc="synth", unit="img", disable=silent, dynamic_ncols=True) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            report = generate_drops(
                out,
                hospitals,
                studies_per_hospital,
                seed=seed,
                scale=scale,
                corrupt_fraction=corrupt_fraction,
                drop=drop,
                only=only or None,
                workers=workers,
                progress=progress,
            )
        except ValueError as e:
            raise click.ClickException(str(e)) from e
    click.echo(report.summary())
    if contact_sheet:
        click.echo(f"contact sheet: {make_contact_sheet(contact_sheet, seed=seed)}")
