"""Make `diffusers.DiffusionPipeline.from_pretrained(dir)` load a saved nami model.

A saved model's `model_index.json` names its pipeline class, `"_class_name": "NamiPipeline"`,
and its components by full module path (`["nami_core.model.transformer", "NamiTransformer"]`).
Stock diffusers resolves them like this:

* the pipeline class is looked up as an attribute of the `diffusers` package
  (`getattr(diffusers, "NamiPipeline")`); the package's lazy-module table is consulted only
  for names not already set on it;
* a component's module is used only if the process has already imported it (diffusers
  never imports a module a repository names: that would run its code).

So importing `nami_core.pipeline` (e.g. `from nami_core import NamiPipeline`) is enough:
it imports every component module and, through `register_pipeline_class`, publishes
`NamiPipeline` as `diffusers.NamiPipeline`. Nothing inside diffusers is replaced; the
alternative diffusers offers for code it does not ship (a pipeline `.py` file inside
each model directory, loaded with `trust_remote_code=True`) would copy that file into
every saved model and make every load opt in to running it.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def register_pipeline_class(pipeline_class: type) -> None:
    """Publish `pipeline_class` under its own name on the `diffusers` package (idempotent).

    A different class already published under that name is left in place, with a warning.
    """
    import diffusers

    name = pipeline_class.__name__
    existing = getattr(diffusers, name, None)
    if existing is pipeline_class:
        return
    if existing is not None:
        logger.warning("diffusers already has a %s (%s); not replacing it", name, getattr(existing, "__module__", "?"))
        return
    setattr(diffusers, name, pipeline_class)
