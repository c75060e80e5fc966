"""Settings and the choices made from them: the settings dataclasses, the recipes, the precision policy and the
devices a run may use."""
