"""Typed settings: configs/defaults.yaml, then command-line overrides."""

from dataclasses import dataclass, fields
from pathlib import Path

from omegaconf import OmegaConf

from app.errors import EaselError

APP_DIR = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = APP_DIR / "configs" / "defaults.yaml"


@dataclass
class Settings:
    models_dir: Path = Path("models")
    outputs_dir: Path = Path("outputs")
    cache_dir: Path = Path(".cache")
    model_configs_dir: Path = Path("configs/models")
    device: str = "auto"
    lowvram: bool = False
    medvram: bool = False
    precision: str = "auto"         # auto | full (float32 everywhere)
    host: str = "127.0.0.1"
    port: int = 7860
    open_browser: bool = True
    demo: bool = False
    watermark: bool = True
    preview_every: int = 2
    queue_size: int = 100
    queue_per_user: int = 20
    preferences_file: Path = Path("user-preferences.json")
    # Sharing on the network (--listen): who may sign in, and what the server accepts.
    auth: str | None = None          # "user:pass[,user2:pass2]"
    auth_file: Path | None = None    # the same, one per line; passwords may be hashed
    api_auth: str | None = None      # other credentials for /sdapi/v1 (default: the page's)
    insecure: bool = False           # --listen without any password, knowingly
    access_file: Path = Path("access-password.txt")  # the generated --listen password, hashed
    max_upload_mb: int = 50
    styles_file: Path = Path("styles.csv")  # A1111's saved styles (name,prompt,negative_prompt)
    safety_filter: bool = False      # blur what the CompVis safety checker flags
    torch_compile: bool = True       # compile the UNet in the background (faster after a few minutes)
    cluster_cpu_cores: int = 4       # --cluster on machines without GPUs: one worker per this many cores

    @property
    def demo_models_dir(self) -> Path:
        return self.cache_dir / "demo-models"


PRECISIONS = ("auto", "full")


def load_settings(overrides: dict | None = None, defaults_file: Path = DEFAULTS_FILE, base_dir: Path = APP_DIR) -> Settings:
    """defaults.yaml merged with `overrides` (None values ignored); relative paths resolved against base_dir."""
    try:
        merged = OmegaConf.merge(
            OmegaConf.structured(Settings),
            OmegaConf.load(defaults_file),
            {k: v for k, v in (overrides or {}).items() if v is not None},
        )
    except Exception as error:  # omegaconf raises many types; all mean "this value does not fit"
        raise EaselError(f"A setting is invalid: {error}. Fix {defaults_file} or the command-line flag.") from error
    settings = OmegaConf.to_object(merged)
    if settings.precision not in PRECISIONS:
        raise EaselError(f"precision must be auto or full, not '{settings.precision}'. Fix {defaults_file} or the flag.")
    for field in fields(Settings):
        value = getattr(settings, field.name)
        if isinstance(value, Path) and not value.is_absolute():
            setattr(settings, field.name, (base_dir / value).resolve())
    return settings
