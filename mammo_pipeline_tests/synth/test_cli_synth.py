"""`mammo synth` on the command line."""

from click.testing import CliRunner
from PIL import Image

from mammo_pipeline.cli.synth import command
from mammo_pipeline.synth import hospital_slugs, read_truth
from mammo_pipeline.synth.profiles import CLASS_MIX, PROFILES


def test_synth_cli_writes_drops_and_contact_sheet(tmp_path):
    out, sheet = tmp_path / "landing", tmp_path / "sheet.png"
    args = [
        str(out),
        "--hospitals",
        "2",
        "--studies-per-hospital",
        "2",
        "--scale",
        "0.05",
        "--seed",
        "4",
        "--drop",
        "d1",
        "--workers",
        "1",
        "--corrupt-fraction",
        "0.2",
        "--contact-sheet",
        str(sheet),
        "-s",
    ]
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 0, result.output
    truth = read_truth(out)
    assert set(truth["hospital"]) == set(hospital_slugs(2)) and truth["corrupt_kind"].notna().any()
    assert f"{len(truth)} files" in result.output
    with Image.open(sheet) as img:
        assert img.height > 100 * len(PROFILES) and img.width > 100 * len(CLASS_MIX)


def test_synth_cli_only_adds_a_drop_for_one_hospital(tmp_path):
    out = tmp_path / "landing"
    base = [str(out), "--studies-per-hospital", "1", "--scale", "0.05", "--workers", "1", "-s"]
    assert CliRunner().invoke(command, [*base, "--hospitals", "1", "--drop", "d1"]).exit_code == 0
    new = hospital_slugs(2)[1]
    result = CliRunner().invoke(command, [*base, "--hospitals", "2", "--drop", "d2", "--only", new])
    assert result.exit_code == 0, result.output
    assert sorted((out / new).iterdir()) == [out / new / "d2"]
    assert not (out / hospital_slugs(1)[0] / "d2").exists()


def test_synth_cli_unknown_hospital_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(command, [str(tmp_path), "--hospitals", "1", "--only", "nowhere", "-s"])
    assert result.exit_code == 1 and "nowhere" in result.output and "Traceback" not in result.output
