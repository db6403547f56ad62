"""Pipeline components that save only their config (no weights of their own)."""

from __future__ import annotations

from pathlib import Path

from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin

from .errors import NamiError


class ConfigOnlyComponent(ModelMixin, ConfigMixin):
    """A `ModelMixin` (so pipelines place, offload and save it) whose saved form is its config.

    Subclasses that need to load something after construction override `after_load(folder)`.
    """

    config_name = "config.json"

    def save_pretrained(self, save_directory, **kwargs) -> None:
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        self.save_config(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None, **kwargs):
        path = Path(pretrained_model_name_or_path)
        folder = path / subfolder if subfolder else path
        if not (folder / cls.config_name).is_file():
            raise NamiError(f"missing {folder / cls.config_name}")
        component = cls.from_config(cls.load_config(folder))
        component.after_load(folder)
        return component

    def after_load(self, folder: Path) -> None:
        """Called by `from_pretrained` with the component's folder."""
