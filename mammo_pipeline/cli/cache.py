"""`mammo cache prune`: delete the image cache's files that nothing names any more (`cache_prune.py`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click
from tqdm import tqdm

from mammo_pipeline.progress import ProgressFn
from mammo_pipeline.settings import Settings


@click.group("cache")
def command() -> None:
    """The image cache: prune the renditions and candidates nothing names any more.

    \b
    Example:
        mammo cache prune --dry-run
        mammo cache prune --hospital royal-surrey-county
    """


@command.command("prune")
@click.option("--hospital", default=None, help="Only this hospital (default: every hospital with a cache folder).")
@click.option("--dry-run", is_flag=True, help="Only say what would be deleted.")
@click.option("-s", "--silent", is_flag=True, help="No progress bar.")
def prune(hospital: str | None, dry_run: bool, silent: bool) -> None:
    """Delete the PNGs no manifest, label store, labels snapshot or newest model names (an earlier normalization's
    too, but never one still in use), second-look candidates of another version or of a PNG gone, and the folders
    left empty. A hospital a cache run holds is skipped, not waited for; the exit code is 1 when one was skipped.

    \b
    Example:
        mammo cache prune --dry-run
        mammo cache prune --hospital royal-surrey-county
    """
    from mammo_pipeline import cache_prune
    from mammo_pipeline.labels.store import NoLabelStore

    settings = Settings.existing()
    names = [hospital] if hospital else cache_prune.hospitals(settings)
    if not names:
        click.echo(f"no hospital has a cache folder under {settings.cache}: nothing to prune")
        return
    verb = "would delete" if dry_run else "deleted"
    done = []
    for name in names:
        with _bar(f"prune {name}", silent) as progress:
            try:
                result = cache_prune.prune(settings, name, dry_run=dry_run, progress=progress)
            except (cache_prune.UnknownHospital, cache_prune.LabelStoreOutOfReach, NoLabelStore, ValueError) as e:
                raise click.ClickException(str(e)) from e
        done.append(result)
        click.echo(result.report(dry_run))
    pruned = [r for r in done if not r.skipped]
    files, size = sum(r.n_files for r in pruned), cache_prune.human_bytes(sum(r.n_bytes for r in pruned))
    click.echo(f"{verb} {files} file(s), {size}, from {len(pruned)} of {len(done)} hospital(s)")
    if skipped := [r.hospital for r in done if r.skipped]:
        raise click.ClickException(f"not pruned: {', '.join(skipped)} (see above)")


@contextlib.contextmanager
def _bar(desc: str, silent: bool) -> Iterator[ProgressFn]:
    """A progress callback whose bar appears at its first call: none for a dry run or a hospital with nothing to
    delete."""
    bar: tqdm | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="file", disable=silent, dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        if bar is not None:
            bar.close()
