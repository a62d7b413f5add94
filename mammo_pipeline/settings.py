"""Every path and knob of mammo-pipeline, rooted at MAMMO_HOME and read from the environment.

The domain code, the CLI, the labeling app and the Dagster resource all build their paths here, so a
user who moves one folder (say the PNG cache to a faster disk) sets one environment variable.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

# (field, environment variable, default relative to MAMMO_HOME or a literal, help)
_PATH_VARS: tuple[tuple[str, str, str, str], ...] = (
    ("landing", "MAMMO_LANDING", "landing", "hospital drops arrive here, one folder per hospital"),
    ("cache", "MAMMO_CACHE", "cache", "normalized PNG renditions"),
    ("warehouse", "MAMMO_WAREHOUSE", "warehouse", "hive-partitioned Parquet tables and warehouse.duckdb"),
    ("models", "MAMMO_MODELS", "models", "trained models and ONNX artifacts, one folder per model_version"),
    ("labels_db", "MAMMO_LABELS_DB", "labels.sqlite", "the label store (SQLite, WAL)"),
    ("reports", "MAMMO_REPORTS", "reports", "pictures and summaries for people"),
    ("dagster_home", "DAGSTER_HOME", "dagster", "the Dagster instance (run history, schedules)"),
)
# (field, environment variable, default, help); every integer knob has a floor (a seed may be any integer).
_INT_VARS: tuple[tuple[str, str, int, str], ...] = (
    ("workers", "MAMMO_WORKERS", 0, "processes for per-image work (0 = one per core)"),
    ("inference_threads", "MAMMO_INFERENCE_THREADS", 0, "ONNX Runtime intra-op threads (0 = one per core)"),
    ("display_size", "MAMMO_DISPLAY_SIZE", 1024, "long side of the display PNG"),
    ("model_size", "MAMMO_MODEL_SIZE", 256, "long side of the model-size PNG"),
    ("retrain_after", "MAMMO_RETRAIN_AFTER", 100, "new labels that trigger retraining"),
    ("seed", "MAMMO_SEED", 0, "seed for splits, queues and training"),
)
_STR_VARS: tuple[tuple[str, str, str, str], ...] = (
    ("pretrained", "MAMMO_PRETRAINED", "imagenet", "'imagenet' (weights required) or 'none' (train from scratch)"),
    ("pretrained_weights", "MAMMO_PRETRAINED_WEIGHTS", "", "path to resnet18-f37072fd.pth"),
    ("dask_scheduler", "MAMMO_DASK_SCHEDULER", "", "address of a Dask scheduler; empty = local process pool"),
    ("salt", "MAMMO_SALT", "", "secret salt for patient pseudonyms; empty = MAMMO_HOME/.salt, made once"),
)
_INT_FLOORS: dict[str, int] = {
    "workers": 0,
    "inference_threads": 0,
    "display_size": 1,
    "model_size": 1,
    "retrain_after": 1,
}
# Variables read where they are used, not by Settings (the sensor, the labeling app, the tests), listed so that
# `mammo home` names every variable the README's configuration table does; the drop sensor's two, with their
# defaults and readers (`quiet_seconds_from_env`, `drop_sensor_interval_from_env`), are defined here.
QUIET_SECONDS_VAR, DEFAULT_QUIET_SECONDS = "MAMMO_DROP_QUIET_SECONDS", 120.0
DROP_SENSOR_INTERVAL_VAR, DEFAULT_DROP_SENSOR_INTERVAL = "MAMMO_DROP_SENSOR_INTERVAL", 30
_OTHER_VARS: tuple[tuple[str, str, str], ...] = (
    (
        QUIET_SECONDS_VAR,
        f"{DEFAULT_QUIET_SECONDS:g}",
        "a drop without _READY is complete when no file changed for this long",
    ),
    (
        DROP_SENSOR_INTERVAL_VAR,
        str(DEFAULT_DROP_SENSOR_INTERVAL),
        "seconds between ticks of the new_hospital_drops sensor",
    ),
    ("MAMMO_ANNOTATORS", "(empty)", "team-mode sign-in for the labeling app (name:password,...)"),
    ("MAMMO_ANNOTATORS_FILE", "(empty)", "the same, from a file"),
    ("MAMMO_ALLOWED_HOSTS", "(empty)", "extra Host names the labeling app answers to (loopback always)"),
    ("MAMMO_SECRET", "(empty)", "the labeling app's session secret; empty = MAMMO_HOME/.session_secret"),
    ("MAMMO_REALDATA", "../shared/realdata", "the real evaluation images; tests and benchmarks skip without them"),
)
ENVIRONMENT_VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("MAMMO_HOME", "./mammo-home", "root of everything below"),
    *((var, f"$MAMMO_HOME/{default}", text) for _, var, default, text in _PATH_VARS),
    *((var, str(default), text) for _, var, default, text in _INT_VARS),
    *((var, default or "(empty)", text) for _, var, default, text in _STR_VARS),
    *_OTHER_VARS,
)


class SettingsError(ValueError):
    """A MAMMO_* variable that cannot be used; the message names the variable and what it accepts."""


def check_hospital_key(hospital: str) -> str:
    """`hospital`, when it names one folder: a hospital partition key is a folder under landing/, and names
    folders under the warehouse tables, the cache and private/. ValueError for "", ".", "..", a path separator
    or NUL: a key typed into the Dagster UI's "Add partition" ("../../elsewhere") read DICOM files outside
    landing/ and wrote tables and the private path lookup outside their folders (stop 62's probe)."""
    if hospital in ("", ".", "..") or any(c in hospital for c in "/\\\x00"):
        raise ValueError(f"{hospital!r} is not a hospital partition key: it must name one folder in landing/")
    return hospital


@dataclass(frozen=True)
class Settings:
    """Resolved paths and knobs. Build with `Settings.from_env()`; tests pass a dict."""

    home: Path
    landing: Path
    cache: Path
    warehouse: Path
    models: Path
    labels_db: Path
    reports: Path
    dagster_home: Path
    workers: int = 0
    inference_threads: int = 0
    display_size: int = 1024
    model_size: int = 256
    retrain_after: int = 100
    seed: int = 0
    pretrained: str = "imagenet"
    pretrained_weights: str = ""
    dask_scheduler: str = ""
    salt: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read MAMMO_* variables (or `env`), then apply keyword overrides.

        Raises
        ------
        SettingsError
            When a variable holds a value it does not accept (a word where a number belongs, a negative count).
        """
        env = os.environ if env is None else env
        home = Path(env.get("MAMMO_HOME") or "mammo-home").expanduser().absolute()
        values: dict[str, object] = {"home": home}
        for name, var, default, _ in _PATH_VARS:
            values[name] = Path(env.get(var) or home / default).expanduser().absolute()
        for name, var, default, _ in _INT_VARS:
            values[name] = _int_var(var, env.get(var), default, _INT_FLOORS.get(name))
        for name, var, default, _ in _STR_VARS:
            values[name] = env.get(var) or default
        if values["pretrained"] not in ("imagenet", "none"):
            raise SettingsError(f"MAMMO_PRETRAINED must be 'imagenet' or 'none', not {values['pretrained']!r}")
        return replace(cls(**values), **overrides)  # type: ignore[arg-type]

    @classmethod
    def existing(cls) -> Settings:
        """`from_env`, for a command that only reads a home: SettingsError when neither the home nor its warehouse
        exists, so a mistyped MAMMO_HOME is an error, not a home with no models, tables or predictions yet."""
        settings = cls.from_env()
        if not settings.home.is_dir() and not settings.warehouse.is_dir():
            raise SettingsError(
                f"no mammo home at {settings.home} (MAMMO_HOME): check the variable, or make one with `mammo demo` "
                "or `mammo home`"
            )
        return settings

    @classmethod
    def under(cls, home: Path | str, **overrides: object) -> Settings:
        """Settings with every path under `home`, ignoring the environment (tests, demos)."""
        return cls.from_env({"MAMMO_HOME": str(home)}, **overrides)

    def as_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings in a subprocess."""
        env = {"MAMMO_HOME": str(self.home)}
        for name, var, _, _ in (*_PATH_VARS, *_INT_VARS, *_STR_VARS):
            value = getattr(self, name)
            if value not in ("", None):
                env[var] = str(value)
        return env

    @property
    def n_workers(self) -> int:
        """Processes for per-image work: the setting, or one per core."""
        return self.workers or os.cpu_count() or 1

    @property
    def n_threads(self) -> int:
        """ONNX Runtime threads: the setting, or one per core."""
        return self.inference_threads or os.cpu_count() or 1

    @property
    def duckdb_path(self) -> Path:
        return self.warehouse / "warehouse.duckdb"

    @property
    def warehouse_reports(self) -> Path:
        """The reports the assets write beside the tables (`<name>.parquet`, each also a view, and pictures)."""
        return self.warehouse / "reports"

    def table_dir(self, table: str, hospital: str | None = None) -> Path:
        """Folder of a warehouse table, or of one hospital's partition (hive layout); ValueError for a hospital
        that is not one folder's name (`check_hospital_key`)."""
        root = self.warehouse / table
        return root / f"hospital={check_hospital_key(hospital)}" if hospital is not None else root

    def pseudonym_salt(self) -> bytes:
        """The secret salt for patient keys: MAMMO_SALT, else a random one kept in MAMMO_HOME/.salt."""
        if self.salt:
            return self.salt.encode()
        path = self.home / ".salt"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            try:
                os.link(tmp, path)  # first writer wins; never overwrite an existing salt
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text().strip().encode()

    def ensure_dirs(self) -> Settings:
        """Create the folders (not the files) and return self."""
        for f in fields(self):
            if f.name in {"landing", "cache", "warehouse", "models", "reports", "dagster_home", "home"}:
                getattr(self, f.name).mkdir(parents=True, exist_ok=True)
        return self


DEFAULT_REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"  # ../shared/realdata of the checkout


def realdata_dir(folder: Path | str | None = None) -> Path:
    """The real-image folder: `folder`, else $MAMMO_REALDATA, else ../shared/realdata next to the checkout."""
    return Path(folder or os.environ.get("MAMMO_REALDATA") or DEFAULT_REALDATA)


def quiet_seconds_from_env(env: Mapping[str, str] | None = None) -> float:
    """MAMMO_DROP_QUIET_SECONDS: seconds without a file change after which a drop without `_READY` counts as fully
    copied. SettingsError naming the variable unless a positive number (the sensor reads it on every tick)."""
    env = os.environ if env is None else env
    raw = env.get(QUIET_SECONDS_VAR)
    if raw is None or not raw.strip():
        return DEFAULT_QUIET_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise SettingsError(f"{QUIET_SECONDS_VAR} must be a number of seconds, not {raw!r}")
    if value <= 0:
        raise SettingsError(f"{QUIET_SECONDS_VAR} must be more than 0, not {raw.strip()}")
    return value


def drop_sensor_interval_from_env(env: Mapping[str, str] | None = None) -> int:
    """MAMMO_DROP_SENSOR_INTERVAL: seconds between new_hospital_drops ticks, read when the code location loads.
    SettingsError naming the variable unless a whole number of at least 1."""
    env = os.environ if env is None else env
    var = DROP_SENSOR_INTERVAL_VAR
    return _int_var(var, env.get(var), DEFAULT_DROP_SENSOR_INTERVAL, 1)


def _int_var(var: str, raw: str | None, default: int, floor: int | None) -> int:
    """The integer in `raw` (blank = `default`), refused with the variable's name when it is not one or too small."""
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{var} must be a whole number, not {raw!r}") from None
    if floor is not None and value < floor:
        raise SettingsError(f"{var} must be at least {floor}, not {value}")
    return value
