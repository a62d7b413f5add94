"""`mammo weights`: find, verify and install the ImageNet ResNet18 weights (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import click

from mammo_pipeline.model.weights import (
    WEIGHTS_FILE,
    WEIGHTS_SHA256_PREFIX,
    PretrainedWeightsError,
    candidates,
    how_to_fix,
    import_weights,
)
from mammo_pipeline.settings import Settings


@click.group("weights")
def command() -> None:
    """Find, verify and install torchvision's ImageNet ResNet18 weights (resnet18-f37072fd.pth).

    \b
    Example:
        mammo weights status
        mammo weights import ~/Downloads/resnet18-f37072fd.pth
    """


@command.command("status")
def status() -> None:
    """Show where the weights are looked for and what was found; exit status 1 when MAMMO_PRETRAINED asks for
    them and none is usable (a script can check before training).

    \b
    Example:
        mammo weights status
    """
    settings = Settings.from_env()
    found = candidates(settings)
    click.echo(f"{WEIGHTS_FILE} (sha256 starts {WEIGHTS_SHA256_PREFIX}); MAMMO_PRETRAINED={settings.pretrained}")
    for cand in found:
        click.echo(f"  {cand.origin:26} {cand.path}: {cand.status}")
    if not any(c.ok for c in found):
        click.echo(how_to_fix() if settings.pretrained != "none" else "Training from scratch (MAMMO_PRETRAINED=none).")
        if settings.pretrained != "none":
            raise SystemExit(1)


@command.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_(file: Path) -> None:
    """Verify FILE's sha256 and copy it into torchvision's cache ($TORCH_HOME/hub/checkpoints).

    \b
    Example:
        mammo weights import ~/Downloads/resnet18-f37072fd.pth
    """
    try:
        target = import_weights(file)
    except PretrainedWeightsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"installed {target}")
