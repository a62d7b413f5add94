"""`mammo synth`: write synthetic hospital drops (DICOM) with their ground truth kept apart."""

from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm

from mammo_pipeline.cli.output import output_file
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
    callback=output_file,
    default=None,
    help="Also write a labelled PNG: one example per vendor profile x class (at --scale, at most 0.25).",
)
@click.option(
    "--realism-report",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=output_file,
    default=None,
    help="Also compare the drops with the real images in --realdata: a table, PNG (real | synthetic) and "
    "PNG_stats.png. Skipped with a message when the real images are absent.",
)
@click.option(
    "--realdata",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Real evaluation images [default: $MAMMO_REALDATA or ../shared/realdata].",
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
    realism_report: Path | None,
    realdata: Path | None,
    silent: bool,
) -> None:
    """Write synthetic hospital drops to OUT/<hospital>/<drop>/ and the truth to OUT/_truth/.

    Re-running with another --drop adds a drop; a larger --hospitals adds hospitals.

    \b
    Example:
        mammo synth landing --hospitals 3 --studies-per-hospital 60 --scale 0.25 --seed 0
        mammo synth landing --hospitals 4 --studies-per-hospital 20 --scale 0.25 --drop drop-2 --only st-georges-tooting
        mammo synth landing --hospitals 3 --scale 0.25 --realism-report reports/realism.png
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
        click.echo(f"contact sheet: {make_contact_sheet(contact_sheet, seed=seed, scale=min(scale, 0.25))}")
    if realism_report:
        from mammo_pipeline.synth.realism_report import RealdataMissing
        from mammo_pipeline.synth.realism_report import realism_report as run_report

        try:
            report_ = run_report(out, realism_report, realdata, echo=click.echo)
        except RealdataMissing as e:
            click.echo(f"realism report skipped: {e}")
            return
        click.echo(report_.summary())
        click.echo("pictures: " + ", ".join(str(p) for p in report_.pictures))
